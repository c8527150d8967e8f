"""The Centre killed with SIGKILL mid-job and started again: the job is picked up and finishes; a cut upload leaves nothing;
no process of the killed Centre (its API processes, worker and roles) outlives it."""

import os
import socket

import psutil
import pytest

from harness.centre import centre, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_running_job_survives_kill_9_of_the_service_and_a_cut_off_upload_is_never_a_file(small_testbed, maths_file, tmp_path):
    _, model = small_testbed
    c = centre(tmp_path / "centre", model, extra_args=("--worker-nice", "10")).start()  # the default, as `service up` runs
    try:
        client = c.client()
        f = client.files.create(file=open(maths_file, "rb"), purpose="fine-tune")
        wait_for(lambda: client.files.retrieve(f.id).status == "processed", 120, "validation")
        job = client.fine_tuning.jobs.create(model=model.name, training_file=f.id, hyperparameters={"n_epochs": 3},
                                             extra_body={"problem": {"domain": "maths"}})
        wait_for(lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data),
                 240, "the job's first round")
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
        up, *api = c.api_processes()
        worker = c.worker()
        roles = worker.children(recursive=True)
        assert len(api) == (2 if os.cpu_count() >= 2 else 0) and up.nice() == 0 and all(p.nice() == 0 for p in api)
        assert worker.nice() == 10 and roles and all(p.nice() == 10 for p in roles)  # the job trains below the API
        _cut_upload(c)
        c.kill()
        gone, alive = psutil.wait_procs([*api, worker, *roles], timeout=30)
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        c.stop()
    c = c.start()  # the same home and database
    try:
        client = c.client()
        assert [x.id for x in client.files.list().data] == [f.id]  # the cut-off upload is not a file
        done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed", "cancelled") and j,
                        300, "the resumed job to end")
        assert done.status == "succeeded", (done.error, c.worker_log()[-3000:])
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200).data]
        assert any("resuming the job in its run folder" in m for m in messages)
        rounds = [e.data["round"] for e in client.fine_tuning.jobs.list_events(job.id, limit=200).data
                  if e.type == "metrics" and "round" in (e.data or {})]
        assert sorted(set(rounds)) == [0, 1, 2]
        assert done.fine_tuned_model in [m.id for m in client.models.list().data]
    finally:
        c.stop()


def _cut_upload(c) -> None:
    """Half of a multipart upload, then the connection dropped."""
    host, port = c.url.removeprefix("http://").split(":")
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n--XyZ\r\nContent-Disposition: form-data; "
            b"name=\"file\"; filename=\"cut.jsonl\"\r\n\r\n" + b'{"text": "half"}\n' * 1000)
    head = (f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {c.key}\r\nContent-Type: multipart/form-data; "
            f"boundary=XyZ\r\nContent-Length: {len(body) * 4}\r\n\r\n").encode()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(head + body)
