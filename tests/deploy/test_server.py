"""`moeforge serve` on a small-testbed export, through the official `openai` client and raw HTTP: the OpenAI routes,
streaming that ends in [DONE], sampling options, batching, keys and limits in OpenAI's error shape, the signed usage
ledger (a client that leaves mid-stream included), and a run with the network off."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx2 as httpx
import pytest
from typer.testing import CliRunner

from moeforge.cli.main import app as cli
from tests.store.conftest import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def export(small_testbed, tmp_path_factory):
    _, model_dir = small_testbed
    out = tmp_path_factory.mktemp("serve") / "maths-export"
    result = CliRunner().invoke(cli, ["export", "--model", str(model_dir), "--data", "math", "--out", str(out), "--k", "4",
                                      "--profile-tokens", "2048", "--eval-tokens", "1024"])
    assert result.exit_code == 0, result.output
    return out


@contextmanager
def serving(app):
    """The app on a free loopback port in a thread; → its base URL. Stops the server and the app's engine after."""
    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: srv.started, timeout_s=60, what="the server")
        yield f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        app.state.engine.close()


@pytest.fixture(scope="module")
def server(export, tmp_path_factory):
    from moeforge.cli.serve import build_app

    tmp = tmp_path_factory.mktemp("ledger")
    app, info = build_app(export, [KEY], "exact", tmp / "ledger", tmp / "usage.pem", 64, 24, 16, 64, "cpu")
    with serving(app) as url:
        yield {"url": url, "name": info["name"], "app": app, "ledger": tmp / "ledger", "pub": tmp / "usage.pub"}


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server['url']}/v1", api_key=KEY, max_retries=0)


def test_models_chat_and_completions_answer_through_the_openai_client(client, server):
    assert [m.id for m in client.models.list().data] == [server["name"]]
    chat = client.chat.completions.create(model=server["name"], messages=[{"role": "user", "content": "What is 2+3?"}],
                                          max_tokens=8, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens <= 8 and chat.usage.prompt_tokens > 0
    text = client.completions.create(model=server["name"], prompt="Question: 1+1?\nAnswer:", max_tokens=6, temperature=0)
    assert text.choices[0].finish_reason in ("stop", "length") and text.usage.completion_tokens <= 6


def test_streams_arrive_in_chunks_that_add_up_to_the_answer_and_end_with_done(client, server):
    pieces = list(client.chat.completions.create(model=server["name"], messages=[{"role": "user", "content": "Count"}],
                                                 max_tokens=10, temperature=0, stream=True))
    streamed = "".join(p.choices[0].delta.content or "" for p in pieces)
    assert pieces[0].choices[0].delta.role == "assistant" and pieces[-1].choices[0].finish_reason in ("stop", "length")
    whole = client.chat.completions.create(model=server["name"], messages=[{"role": "user", "content": "Count"}], max_tokens=10,
                                           temperature=0)
    assert streamed == whole.choices[0].message.content  # greedy: the same answer either way
    with httpx.stream("POST", f"{server['url']}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": server["name"], "prompt": "Question: 7?\nAnswer:", "max_tokens": 5, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_seed_temperature_top_p_stop_and_max_tokens_are_honoured(client, server):
    def sample(seed):
        return client.completions.create(model=server["name"], prompt="Question: 3+4?\nAnswer:", max_tokens=12, temperature=1.0,
                                         top_p=0.9, seed=seed).choices[0].text
    assert sample(7) == sample(7)
    greedy = client.completions.create(model=server["name"], prompt="Question: 3+4?\nAnswer:", max_tokens=12, temperature=0)
    assert greedy.choices[0].finish_reason == "length" or greedy.usage.completion_tokens < 12
    text = greedy.choices[0].text
    if len(text) > 3:
        stop = text[2:4]
        cut = client.completions.create(model=server["name"], prompt="Question: 3+4?\nAnswer:", max_tokens=12, temperature=0, stop=[stop])
        assert cut.choices[0].text == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"


def test_concurrent_requests_are_batched_and_each_gets_its_own_greedy_answer(client, server):
    engine = server["app"].state.engine
    prompts = [f"Question: {'x' * i} {i}+1?\nAnswer:" for i in range(8)]
    alone = [client.completions.create(model=server["name"], prompt=p, max_tokens=6, temperature=0).choices[0].text for p in prompts[:2]]
    before = engine.largest_batch
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: client.completions.create(model=server["name"], prompt=p, max_tokens=6,
                                                                     temperature=0).choices[0].text, prompts))
    assert max(before, engine.largest_batch) > 1
    assert together[:2] == alone  # left padding and positions do not change an answer


def test_bad_requests_get_openai_shaped_4xx_errors(server):
    url, name = server["url"], server["name"]
    auth = {"Authorization": f"Bearer {KEY}"}
    cases = [
        ("get", "/v1/models", {}, None, 401),
        ("get", "/v1/models", {"Authorization": "Bearer wrong"}, None, 401),
        ("post", "/v1/chat/completions", auth, {"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404),
        ("post", "/v1/chat/completions", auth, {"model": name, "messages": [{"role": "wizard", "content": "x"}]}, 400),
        ("post", "/v1/chat/completions", auth, {"model": name, "messages": "hello"}, 400),
        ("post", "/v1/completions", auth, {"model": name, "prompt": "x" * 500}, 400),
        ("post", "/v1/completions", auth, {"model": name, "prompt": "x", "temperature": 9}, 400),
        ("post", "/v1/completions", auth, {"model": name, "prompt": "x", "max_tokens": 0}, 400),
        ("post", "/v1/completions", auth, {"model": name, "prompt": 3}, 400),
    ]
    for method, path, headers, body, status in cases:
        r = getattr(httpx, method)(url + path, headers=headers, **({"json": body} if body is not None else {}))
        assert r.status_code == status, (path, body, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
    r = httpx.post(url + "/v1/completions", headers={**auth, "Content-Type": "application/json"}, content=b"{not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    long = httpx.post(url + "/v1/completions", headers=auth, json={"model": name, "prompt": "x " * 300}).json()["error"]
    assert long["code"] == "context_length_exceeded"


def test_a_client_leaving_mid_stream_stops_its_generation_and_the_ledger_stays_whole(server, client):
    from moeforge.deploy.usage import verify_ledger

    with httpx.stream("POST", f"{server['url']}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": server["name"], "prompt": "Question: tell a long story\nAnswer:", "max_tokens": 24,
                            "temperature": 1.0, "stream": True}) as r:
        next(r.iter_lines())
    wait_until(lambda: httpx.get(f"{server['url']}/health").json()["in_flight"] == 0, timeout_s=60, what="the request to end")
    client.completions.create(model=server["name"], prompt="Question: 1?\nAnswer:", max_tokens=3)
    totals, problems = verify_ledger(server["ledger"], server["pub"])
    assert problems == []
    records = [json.loads(line) for f in sorted(server["ledger"].glob("usage-*.jsonl")) for line in f.read_text().splitlines()]
    assert totals["requests"] == len(records) > 0
    for rec in records:  # every token in and out went through top-k experts in each MoE layer
        assert sum(rec["experts"].values()) == sum(rec["entries"].values()) > 0
    assert any(rec["finish_reason"] in ("cancelled", "length", "stop") for rec in records)


def test_usage_report_verifies_the_chain_and_names_a_tampered_record(server, tmp_path, client):
    client.completions.create(model=server["name"], prompt="Question: 2?\nAnswer:", max_tokens=3)
    copy = tmp_path / "ledger"
    shutil.copytree(server["ledger"], copy)
    runner = CliRunner()
    ok = runner.invoke(cli, ["usage", "report", str(copy), "--public-key", str(server["pub"])])
    assert ok.exit_code == 0 and "verified" in ok.output, ok.output
    file = sorted(copy.glob("usage-*.jsonl"))[-1]
    lines = file.read_text().splitlines()
    record = json.loads(lines[0])
    record["completion_tokens"] += 1000
    file.write_text("\n".join([json.dumps(record, sort_keys=True), *lines[1:]]) + "\n")
    bad = runner.invoke(cli, ["usage", "report", str(copy), "--public-key", str(server["pub"])])
    assert bad.exit_code == 1 and f"{file.name}:1: its hash does not match its content" in " ".join(bad.output.split())


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux) for a network namespace")
def test_the_server_answers_in_a_network_namespace_with_no_interface_but_loopback(export, tmp_path):
    script = f"""
set -e
ip link set lo up
{sys.executable} -m moeforge serve {export} --port 8791 --api-key {KEY} --ledger {tmp_path}/ledger --ledger-key {tmp_path}/k.pem &
for i in $(seq 1 300); do {sys.executable} -c "import httpx2; httpx2.get('http://127.0.0.1:8791/health')" 2>/dev/null && break; sleep 0.2; done
{sys.executable} -c "
from openai import OpenAI
c = OpenAI(base_url='http://127.0.0.1:8791/v1', api_key='{KEY}', max_retries=0)
r = c.chat.completions.create(model='{export.name}', messages=[{{'role': 'user', 'content': 'hi'}}], max_tokens=4)
print('ANSWER', r.usage.completion_tokens)
"
kill %1
"""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -n is not permitted here: {probe.stderr.decode().strip()}")
    done = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MOEFORGE_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ANSWER" in done.stdout
    routes = subprocess.run(["unshare", "-n", "ip", "route"], capture_output=True, text=True)
    assert routes.stdout.strip() == ""  # no route anywhere: nothing but loopback exists in such a namespace


def test_the_standard_export_answers_the_same_under_transformers_serve(export, tmp_path):
    """The ecosystem's own server loads the standard checkpoint and, greedy, says what moeforge's server says with the
    checkpoint's own (standard) routing."""
    import socket

    import uvicorn
    from openai import OpenAI

    from moeforge.cli.serve import build_app

    tserve = shutil.which("transformers", path=os.path.dirname(sys.executable))
    if tserve is None:
        pytest.skip("the transformers CLI is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([tserve, "serve", str(export), "--port", str(port), "--host", "127.0.0.1", "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    app, info = build_app(export, [KEY], "standard", tmp_path / "ledger", tmp_path / "k.pem", 256, 16, 4, 8, "cpu")
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout_s=120, what="transformers serve")
        wait_until(lambda: srv.started, timeout_s=60, what="moeforge serve")
        ours = OpenAI(base_url=f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}/v1", api_key=KEY, max_retries=0)
        theirs = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        prompt = "Question: 1+1?\nAnswer:"
        a = ours.completions.create(model=info["name"], prompt=prompt, max_tokens=8, temperature=0).choices[0].text
        b = theirs.completions.create(model=str(export), prompt=prompt, max_tokens=8, temperature=0).choices[0].text
        assert a == b, (a, b)
        chunks = list(theirs.chat.completions.create(model=str(export), messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                                      stream=True))
        assert chunks and chunks[0].choices[0].delta.role == "assistant"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        srv.should_exit = True
        thread.join(timeout=30)
        app.state.engine.close()


def test_health_and_prometheus_metrics_count_what_was_served(server, client):
    client.completions.create(model=server["name"], prompt="Question: 5?\nAnswer:", max_tokens=2)
    health = httpx.get(f"{server['url']}/health").json()
    assert health["status"] == "ok" and health["model"] == server["name"]
    text = httpx.get(f"{server['url']}/metrics").text
    served = [line for line in text.splitlines() if line.startswith('moeforge_serve_requests_total{endpoint="completions"')]
    assert served and sum(float(line.split()[-1]) for line in served) >= 1
    assert "moeforge_serve_tokens_total" in text and "moeforge_serve_time_to_first_token_seconds_count" in text


def test_keys_from_a_keys_file_expire_and_revoke_while_it_runs_and_requests_past_the_in_flight_limit_get_429(export, tmp_path):
    """A server on a keys file (no restart between changes): a key made later is accepted, a revoked one and one past
    its expiry are refused with their own codes; with one request in flight allowed, a second one gets a 429 in
    OpenAI's shape while the first is generated, and the next one after it is served."""
    from datetime import UTC, datetime, timedelta

    from moeforge.cli.serve import build_app
    from moeforge.deploy.keys import create_key, read_keys, revoke_key, write_keys

    keys = tmp_path / "keys.json"
    first, first_key = create_key(keys, "first")
    app, info = build_app(export, [], "exact", tmp_path / "ledger", tmp_path / "k.pem", 64, 24, 4, 1, "cpu", keys_file=keys)
    assert not info["made_key"]
    with serving(app) as url:
        def models(key):
            return httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"})

        assert models(first_key).status_code == 200
        second, second_key = create_key(keys, "second", "1h")
        assert models(second_key).status_code == 200
        revoke_key(keys, first.id)
        refused = models(first_key)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "revoked_api_key", refused.text
        file = read_keys(keys)
        file.keys[1].expires_at = datetime.now(UTC) - timedelta(seconds=1)
        write_keys(keys, file)
        expired = models(second_key)
        assert expired.status_code == 401 and expired.json()["error"]["code"] == "expired_api_key", expired.text
        assert models("sk-moeforge-never-made").json()["error"]["code"] == "invalid_api_key"

        third, key = create_key(keys, "third")
        auth = {"Authorization": f"Bearer {key}"}
        body = {"model": info["name"], "prompt": "Question: 1+2?\nAnswer:", "max_tokens": 4}
        engine, gate = app.state.engine, threading.Event()
        generate = engine._generate
        engine._generate = lambda batch: (gate.wait(60), generate(batch))  # the first request is held in the engine
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(httpx.post, f"{url}/v1/completions", headers=auth, json=body, timeout=60)
            wait_until(lambda: httpx.get(f"{url}/health").json()["in_flight"] == 1, timeout_s=60, what="the first request in flight")
            busy = httpx.post(f"{url}/v1/completions", headers=auth, json=body)
            assert busy.status_code == 429, busy.text
            assert busy.json()["error"]["type"] == "rate_limit_error" and set(busy.json()["error"]) == {"message", "type", "param", "code"}
            gate.set()
            assert held.result().status_code == 200
        assert httpx.post(f"{url}/v1/completions", headers=auth, json=body).status_code == 200  # its slot is free again
        text = httpx.get(f"{url}/metrics").text
        assert any(line.startswith('moeforge_serve_requests_total{endpoint="completions",outcome="rejected"} 1')
                   for line in text.splitlines()), text
