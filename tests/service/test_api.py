"""The Centre through the official `openai` client and plain HTTP: the whole job, tenants kept apart, bad input refused."""

import io
import json
import tarfile

import httpx
import openai
import pytest

from harness.centre import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FINAL = ("succeeded", "failed", "cancelled")


def _processed(client, file_id, timeout_s=120):
    return wait_for(lambda: (f := client.files.retrieve(file_id)).status != "uploaded" and f, timeout_s, f"file {file_id} validated")


def _ended(client, job_id, timeout_s=300):
    return wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in FINAL and j, timeout_s, f"job {job_id} to end")


@pytest.fixture(scope="module")
def finished(running_centre, maths_file):
    """(client, file, job) of one maths job run to its end through the openai client."""
    client = running_centre.client()
    uploaded = client.files.create(file=open(maths_file, "rb"), purpose="fine-tune")
    assert uploaded.status == "uploaded" and uploaded.bytes == maths_file.stat().st_size
    uploaded = _processed(client, uploaded.id)
    job = client.fine_tuning.jobs.create(model=running_centre.model.name, training_file=uploaded.id,
                                         hyperparameters={"n_epochs": 2},
                                         extra_body={"problem": {"domain": "maths", "goal": "solve word problems"}})
    assert job.status == "validating_files"
    return client, uploaded, _ended(client, job.id)


def test_the_openai_client_uploads_a_file_and_runs_a_job_to_a_model_and_an_export(running_centre, finished):
    client, uploaded, job = finished
    report = uploaded.report
    assert uploaded.status == "processed" and report["records"] == 300 and report["skipped"] == 0
    assert report["fields"] == "question → prompt, answer → response" and report["tokens"] > 300
    assert job.status == "succeeded", (job.error, running_centre.worker_log()[-3000:])
    assert job.hyperparameters.n_epochs == 2 and len(job.fine_tuned_model) == 64
    assert job.trained_tokens == _miners_tokens(running_centre, job.id) > 0
    plan = job.plan
    memory = plan["memory"]
    assert plan["selection"]["experts"] > 0 and set(memory) == {"full", "quantized", "subset", "offload"}
    assert memory["subset"]["bytes"] < memory["full"]["bytes"] and memory["offload"]["bytes"] < memory["full"]["bytes"]
    assert memory["offload"]["host_bytes"] > 0 and memory["full"]["host_bytes"] == 0  # offload keeps the experts in host memory
    for m in memory.values():
        assert m["bytes"] == m["weights"] + m["trainable_state"] + m["activations"]
    assert [j.id for j in client.fine_tuning.jobs.list().data][-1] == job.id
    events = [e.message for e in reversed(client.fine_tuning.jobs.list_events(job.id, limit=100).data)]
    assert events[0].startswith("job created") and any(m.startswith("planned:") for m in events)
    rounds = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics" and "round" in (e.data or {})]
    assert sorted(e.data["round"] for e in rounds) == [0, 1]
    assert all(e.data["general_ppl"] > 0 and e.data["held_out_loss"] > 0 for e in rounds if e.data["choice"] != "none")
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert {c.step_number for c in checkpoints} <= {0, 1} and all(len(c.fine_tuned_model_checkpoint) == 64 for c in checkpoints)
    assert job.fine_tuned_model in [m.id for m in client.models.list().data]
    model = client.models.retrieve(job.fine_tuned_model)
    assert model.owned_by == "you" and model.domain == "maths" and "maths" in model.card  # the problem's domain
    heat = httpx.get(f"{running_centre.url}/v1/fine_tuning/jobs/{job.id}/heatmap.png", headers=_auth(running_centre.key))
    assert heat.status_code == 200 and heat.content.startswith(b"\x89PNG")
    export = wait_for(lambda: (e := _get(running_centre, f"/v1/exports?job={job.id}")["data"]) and e[0]["status"] in
                      ("succeeded", "failed") and e[0], 300, "the job's export")
    assert export["status"] == "succeeded", export["error"]
    tar = httpx.get(f"{running_centre.url}{export['download']}", headers=_auth(running_centre.key), timeout=60)
    assert tar.status_code == 200 and len(tar.content) == export["bytes"]
    names = tarfile.open(fileobj=io.BytesIO(tar.content)).getnames()
    assert any(n.endswith("SHA256SUMS") for n in names) and any(n.endswith("config.json") for n in names)


def test_a_job_is_cancelled_and_a_second_create_with_the_same_idempotency_key_is_the_same_job(running_centre, finished):
    client, uploaded, _ = finished
    headers = {"Idempotency-Key": "one-job-please"}
    first = client.fine_tuning.jobs.create(model=running_centre.model.name, training_file=uploaded.id, extra_headers=headers)
    again = client.fine_tuning.jobs.create(model=running_centre.model.name, training_file=uploaded.id, extra_headers=headers)
    assert again.id == first.id
    with pytest.raises(openai.ConflictError, match="Idempotency-Key"):
        client.fine_tuning.jobs.create(model=running_centre.model.name, training_file=uploaded.id, seed=7, extra_headers=headers)
    cancelled = client.fine_tuning.jobs.cancel(first.id)
    assert cancelled.cancel_requested
    assert _ended(client, first.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="only a job that has not ended"):
        client.fine_tuning.jobs.cancel(first.id)


def _auth(key):
    return {"Authorization": f"Bearer {key}"}


def _get(centre, path, key=None):
    r = httpx.get(f"{centre.url}{path}", headers=_auth(key or centre.key), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_another_tenant_sees_none_of_it_and_bad_keys_are_refused(running_centre, finished):
    _, uploaded, job = finished
    other = running_centre.new_tenant("tenant-b")
    export = _get(running_centre, f"/v1/exports?job={job.id}")["data"][0]["id"]
    theirs = [f"/v1/files/{uploaded.id}", f"/v1/fine_tuning/jobs/{job.id}", f"/v1/fine_tuning/jobs/{job.id}/events",
              f"/v1/fine_tuning/jobs/{job.id}/checkpoints", f"/v1/fine_tuning/jobs/{job.id}/heatmap.png",
              f"/v1/models/{job.fine_tuned_model}", f"/v1/models/{job.fine_tuned_model}/heatmap.png", f"/v1/exports/{export}",
              f"/v1/exports/{export}/content"]
    for path in theirs:
        r = httpx.get(f"{running_centre.url}{path}", headers=_auth(other))
        assert r.status_code == 404 and r.json()["error"]["message"].startswith("no "), (path, r.text)
        assert uploaded.id not in r.text.replace(path, "") or path.endswith(uploaded.id)
    for method, path, body in [("POST", f"/v1/fine_tuning/jobs/{job.id}/cancel", None), ("DELETE", f"/v1/files/{uploaded.id}", None),
                               ("POST", "/v1/exports", {"job": job.id}),
                               ("POST", "/v1/fine_tuning/jobs", {"model": running_centre.model.name, "training_file": uploaded.id})]:
        r = httpx.request(method, f"{running_centre.url}{path}", headers=_auth(other), json=body)
        assert r.status_code in (400, 404) and uploaded.id not in json.dumps(r.json().get("data", "")), (path, r.text)
    for listing in ("/v1/files", "/v1/fine_tuning/jobs", "/v1/exports", "/v1/models"):
        assert _get(running_centre, listing, other)["data"] == [], listing
    for key, code in [(None, "missing_api_key"), ("Bearer nonsense", "invalid_api_key"),
                      ("Bearer " + other[:-4] + "AAAA", "invalid_api_key")]:
        r = httpx.get(f"{running_centre.url}/v1/files", headers={"Authorization": key} if key else {})
        assert r.status_code == 401 and r.json()["error"]["code"] == code, r.text
    created = httpx.post(f"{running_centre.url}/v1/keys", headers=_auth(other), json={"name": "reader", "scopes": ["read"]}).json()
    reader = created["key"]
    assert httpx.get(f"{running_centre.url}/v1/files", headers=_auth(reader)).status_code == 200
    denied = httpx.post(f"{running_centre.url}/v1/exports", headers=_auth(reader), json={"job": job.id})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "insufficient_scope"
    assert httpx.delete(f"{running_centre.url}/v1/keys/{created['id']}", headers=_auth(running_centre.key)).status_code == 404
    assert httpx.delete(f"{running_centre.url}/v1/keys/{created['id']}", headers=_auth(other)).status_code == 200
    revoked = httpx.get(f"{running_centre.url}/v1/files", headers=_auth(reader))
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "revoked_api_key"
    audit = _get(running_centre, "/v1/audit", other)["data"]
    assert {a["action"] for a in audit} >= {"POST /v1/keys", "DELETE /v1/keys"} and all(a["key_id"] for a in audit)
    assert all(job.id not in json.dumps(a) for a in audit if a["status"] == 200 and a["action"] != "POST /v1/exports")


@pytest.mark.parametrize("name,content,code", [
    ("empty.jsonl", b"", "empty_file"),
    ("binary.jsonl", b"\x00\x01\x02garbage" * 10, "binary_file"),
    ("latin1.jsonl", '{"text": "caf\u00e9"}\n'.encode("latin-1"), "invalid_encoding"),
    ("array.json", b'[{"text": "a"}, {"text": "b"}]', "invalid_file_format"),
    ("broken.jsonl", b'{"text": "a"\n', "invalid_file_format"),
    ("notes.exe", b"hello\n", "unknown_format"),
    ("../../etc/passwd.jsonl", b'{"text": "a"}\n', "bad_filename"),
    ("fake.parquet", b"not parquet at all", "invalid_file_format"),
])
def test_bad_files_are_refused_with_one_error_shape_and_nothing_stored(running_centre, name, content, code):
    before = len(_get(running_centre, "/v1/files")["data"])
    r = httpx.post(f"{running_centre.url}/v1/files", headers=_auth(running_centre.key), files={"file": (name, content)},
                   data={"purpose": "fine-tune"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["param"] == "file" and error["message"], error
    assert len(_get(running_centre, "/v1/files")["data"]) == before


def test_a_file_whose_records_are_all_bad_ends_in_error_naming_the_line(running_centre):
    client = running_centre.client()
    rows = b'{"question": "q1", "answer": "a1"}\n{"question": 3, "answer": "a2"}\n'
    f = _processed(client, client.files.create(file=("mixed.jsonl", rows), purpose="fine-tune").id)
    assert f.status == "processed" and f.report["records"] == 1 and f.report["skipped_rows"][0]["line"] == "line 2"
    bad = _processed(client, client.files.create(file=("none.jsonl", b'{"other": 1}\n{"other": 2}\n'), purpose="fine-tune").id)
    assert bad.status == "error" and "no records" in bad.status_details and "/" not in bad.status_details.split(":")[0]
    with pytest.raises(openai.BadRequestError, match="failed validation"):
        client.fine_tuning.jobs.create(model=running_centre.model.name, training_file=bad.id)


def test_bad_job_requests_are_4xx_in_one_shape(running_centre, maths_file):
    url, h = running_centre.url, _auth(running_centre.key)
    file_id = _get(running_centre, "/v1/files")["data"][-1]["id"]
    model = running_centre.model.name
    cases = [
        ({"model": "gpt-9", "training_file": file_id}, 400, "model"),
        ({"model": model, "training_file": "file-000000000000000000000000"}, 404, "training_file"),
        ({"model": model, "training_file": file_id, "surprise": 1}, 400, "surprise"),
        ({"model": model, "training_file": file_id, "problem": {"domain": "Bad Domain!"}}, 400, "problem.domain"),
        ({"model": model, "training_file": file_id, "hyperparameters": {"n_epochs": 999}}, 400, "hyperparameters.n_epochs"),
        ({"training_file": file_id}, 400, "model"),
    ]
    for body, status, param in cases:
        r = httpx.post(f"{url}/v1/fine_tuning/jobs", headers=h, json=body)
        assert r.status_code == status and r.json()["error"]["param"] == param, (body, r.text)
    r = httpx.post(f"{url}/v1/fine_tuning/jobs", headers={**h, "Content-Type": "application/json"}, content=b'{"model": ')
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/fine_tuning/jobs", headers={**h, "Content-Type": "application/json"}, content=b" " * (2 * 1024 * 1024))
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(f"{url}/v1/files", headers={**h, "Content-Type": "application/json"}, content=b"{}")
    assert r.status_code == 415
    r = httpx.get(f"{url}/v1/fine_tuning/jobs/{'x' * 500}", headers=h)
    assert r.status_code == 404 and len(r.text) < 400


def test_the_jobs_cli_creates_watches_and_lists_a_job_over_http(running_centre, maths_file):
    where = ["--url", running_centre.url, "--key", running_centre.key]
    created = running_centre.cli("jobs", "create", "--file", str(maths_file), "--domain", "maths-cli", "--rounds", "1",
                                 "--json", *where)
    assert created.returncode == 0, created.stderr + created.stdout
    job_id = json.loads(created.stdout[created.stdout.index("{"):])["id"]
    watched = running_centre.cli("jobs", "watch", job_id, *where)
    assert watched.returncode == 0 and "job created" in watched.stdout and f"job {job_id} succeeded" in watched.stdout, watched.stdout
    assert job_id in running_centre.cli("jobs", "ls", "--json", *where).stdout
    refused = running_centre.cli("jobs", "ls", "--url", running_centre.url, "--key", "mfk_wrong")
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr + refused.stdout and "Traceback" not in refused.stderr


def test_a_job_with_too_little_data_for_its_held_out_sample_fails_at_planning_saying_so(running_centre, maths_file):
    client = running_centre.client()
    few = b"".join(line + b"\n" for line in maths_file.read_bytes().splitlines()[:20])
    f = _processed(client, client.files.create(file=("few.jsonl", few), purpose="fine-tune").id)
    job = _ended(client, client.fine_tuning.jobs.create(model=running_centre.model.name, training_file=f.id).id)
    # the split is salted per job: 20 records hold out 1–5 (packing into too few rows) or, one time in eight, none
    assert job.status == "failed" and job.error.code == "profiling_failed" and job.plan is None
    assert "held-out split packs into" in job.error.message or "0 held out; the job needs both" in job.error.message
    assert not any("running on the network" in e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data)


def _miners_tokens(centre, job_id) -> int:
    """What the job's miners logged as trained, read from their own event files."""
    runs = centre.root / "home" / "service" / "runs" / job_id / "network"
    events = [json.loads(line) for path in runs.glob("miner-*/events.jsonl") for line in path.read_text().splitlines()]
    return sum(e["tokens"] for e in events if e["event"] == "trained")
