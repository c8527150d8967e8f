"""A bug met by the Centre's worker fails the one file, job or export it was handling, with a message that names no
internals, and the worker goes on with the rest; before, the same item was handled again on every pass, forever (and a
file stuck that way kept every later upload from being validated). And a long export or plan does not hold up the
validation of uploads: files have a loop of their own."""

import json
import logging
import threading

import pytest

from harness.centre import wait_for

pytestmark = pytest.mark.slow


def boom(*args, **kwargs):
    raise RuntimeError("a bug with /private/paths in its message")


def test_a_bug_while_validating_fails_that_file_and_the_next_upload_is_validated(market, worker, monkeypatch, caplog):
    import moeforge.service.validation as validation

    m = market
    first = m.client.post("/v1/files", headers=m.h("carol"), files={"file": ("a.jsonl", b'{"prompt": "a", "response": "b"}\n')},
                          data={"purpose": "fine-tune"}).json()
    second = m.client.post("/v1/files", headers=m.h("carol"), files={"file": ("b.jsonl", b'{"prompt": "c", "response": "d"}\n')},
                           data={"purpose": "fine-tune"}).json()
    with monkeypatch.context() as patch, caplog.at_level(logging.ERROR, logger="moeforge.service.worker"):
        patch.setattr(validation, "validate", boom)
        assert worker.validate_next_file()
    shown = m.client.get(f"/v1/files/{first['id']}", headers=m.h("carol")).json()
    assert shown["status"] == "error" and shown["status_details"].startswith("internal error (RuntimeError)")
    assert "/private/paths" not in shown["status_details"] and "/private/paths" in caplog.text  # the trace is in the log only
    assert worker.validate_next_file()  # the next pass takes the next file, not the failed one again
    assert m.client.get(f"/v1/files/{second['id']}", headers=m.h("carol")).json()["status"] == "processed"
    assert not worker.validate_next_file()


def test_a_bug_while_planning_fails_the_job_instead_of_planning_it_again_on_every_pass(market, worker, data_file, monkeypatch):
    import moeforge.service.plan as plan

    m = market
    job = m.client.post("/v1/fine_tuning/jobs", headers=m.h("bob"), json={"model": "testbed-small", "training_file": data_file,
                                                                           "hyperparameters": {"n_epochs": 1}}).json()
    assert worker.advance_jobs()  # its file is validated: on to profiling
    with monkeypatch.context() as patch:
        patch.setattr(plan, "make_plan", boom)
        assert worker.advance_jobs()
        shown = m.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=m.h("bob")).json()
        assert shown["status"] == "failed", shown
        assert shown["error"]["code"] == "internal_error" and "/private/paths" not in shown["error"]["message"]
        assert not worker.advance_jobs()  # nothing left to do: the failed job is not profiled again


def test_a_bug_while_exporting_fails_the_export_and_the_next_one_is_made(market, worker, monkeypatch):
    from moeforge.data.corpora import load_corpus
    from moeforge.service.worker import Worker

    m, e = market, market.entries
    text = "".join(json.dumps({"question": r.prompt, "answer": r.response}) + "\n" for r in load_corpus("math", "train")[:50])
    data = m.client.post("/v1/files", headers=m.h("alice"), files={"file": ("maths.jsonl", text.encode())},
                         data={"purpose": "fine-tune"}).json()
    assert worker.validate_next_file()
    body = {"models": [e[0]], "file": data["id"]}  # an entry of alice's own
    broken = m.client.post("/v1/exports", headers=m.h("alice"), json=body).json()
    with monkeypatch.context() as patch:
        patch.setattr(Worker, "_export", boom)
        assert worker.export_next()
    failed = m.client.get(f"/v1/exports/{broken['id']}", headers=m.h("alice")).json()
    assert failed["status"] == "failed" and failed["error"].startswith("internal error (RuntimeError)")
    again = m.client.post("/v1/exports", headers=m.h("alice"), json=body).json()
    assert worker.export_next()
    assert m.client.get(f"/v1/exports/{again['id']}", headers=m.h("alice")).json()["status"] == "succeeded"
    assert not worker.export_next()


def test_an_upload_is_validated_while_the_main_loop_is_held_up_by_a_long_export(market, worker, monkeypatch):
    from moeforge.service.worker import Worker

    m = market
    held, release = threading.Event(), threading.Event()

    def long_export(self):  # the main loop's pass, stuck as in an export of a large model on a busy machine
        held.set()
        release.wait(120)
        return False

    monkeypatch.setattr(Worker, "step", long_export)
    stop = threading.Event()
    running = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    running.start()
    try:
        assert held.wait(30), "the worker's main loop did not start"
        f = m.client.post("/v1/files", headers=m.h("carol"), files={"file": ("late.jsonl", b'{"prompt": "e", "response": "f"}\n')},
                          data={"purpose": "fine-tune"}).json()
        shown = wait_for(lambda: (x := m.client.get(f"/v1/files/{f['id']}", headers=m.h("carol")).json())["status"] != "uploaded"
                         and x, 60, "the upload validated while the main loop is held")
        assert shown["status"] == "processed" and not release.is_set()
    finally:
        stop.set()
        release.set()
        running.join(30)
    assert not running.is_alive()
