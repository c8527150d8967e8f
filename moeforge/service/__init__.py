"""The Customization Centre: one HTTP API (FastAPI) and a web UI on it, from a customer's data to a deployable model.

DESIGN.md "The Customization Centre and the marketplace". The API speaks the OpenAI fine-tuning
shapes, so the official `openai` client drives it (base URL `http://HOST:PORT/v1`, the tenant's
API key). Every route needs `Authorization: Bearer <key>`; a key has scopes `read` (GET),
`write` (POST/DELETE on files, jobs, exports) and `admin` (keys, audit). Errors are one shape,
`{"error": {"message", "type", "param", "code"}}`, with a 4xx status for anything the caller can fix.

    POST   /v1/files                      multipart: file, purpose=fine-tune → File (status uploaded)
    GET    /v1/files                      {object: list, data: [File], has_more}
    GET    /v1/files/{id}                 File: id, object=file, bytes, created_at, filename, purpose,
                                          status uploaded|processed|error, status_details, report
    DELETE /v1/files/{id}                 {id, object: file, deleted: true}
    POST   /v1/fine_tuning/jobs           {model, training_file, validation_file?, seed?, suffix?, metadata?,
                                          hyperparameters?: {n_epochs: rounds}, problem?: {domain, goal, metric},
                                          files?: [more file ids]}; header Idempotency-Key → Job
    GET    /v1/fine_tuning/jobs           ?limit&after → list of Job, newest first
    GET    /v1/fine_tuning/jobs/{id}      Job: id, object=fine_tuning.job, status validating_files|profiling|
                                          queued|running|succeeded|failed|cancelled, plan, fine_tuned_model, error …
    POST   /v1/fine_tuning/jobs/{id}/cancel
    GET    /v1/fine_tuning/jobs/{id}/events       list of Event (newest first): id, created_at, level, type
                                                  message|metrics, message, data
    GET    /v1/fine_tuning/jobs/{id}/checkpoints  list of Checkpoint: step_number (round), metrics
    GET    /v1/models                     the library entries this tenant may use: its own and the shared ones
    GET    /v1/models/{id}                Model with its card (markdown), metrics, lineage
    GET    /v1/models/{id}/heatmap.png    the routing profile the entry's experts were selected from
    GET    /v1/exports                    right-sized exports and bundles of the tenant's finished jobs
    POST   /v1/exports                    {job, coverage?} → Export (a finished job is exported once by itself)
    GET    /v1/exports/{id}               Export: status queued|running|succeeded|failed, summary, bytes, sha256
    GET    /v1/exports/{id}/content       the bundle as a tar (application/x-tar)
    GET    /v1/keys, POST /v1/keys {name, scopes}, DELETE /v1/keys/{id}   (admin)
    GET    /v1/audit                      who did what, this tenant's (admin)
    GET    /health                        no key
    GET    /                              the web UI (static/, no build step, no CDN)

Jobs never run in the web process: `moeforge service up` starts the API and one worker process
(`service/worker.py`), which validates uploads, profiles and plans each job, runs it on a local
network (or a chain and store by URL), deposits the result in the library and exports it. All state
is in the database (SQLite by default, PostgreSQL by URL), so either process can be killed and
restarted without losing a job.
"""
