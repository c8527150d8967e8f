"""Real `moeforge` processes on one machine: an owner, two miners and a validator, talking only through the
local chain and a store (a folder, then S3 on a loopback moto server), two rounds on the small testbed."""

import json
import subprocess
import sys
import uuid

import pytest

from moeforge.chain.open import open_chain
from moeforge.network.history import RESULT_FILE, JobRecord
from moeforge.network.local import LOCKSTEP_SCHEDULE, NetworkPlan, run_local_network
from moeforge.network.observe import read_events
from moeforge.network.persist import read_model
from moeforge.network.validator import STATE_FILE, ValidatorState
from moeforge.store.open import open_store
from tests.network.conftest import SALT
from tests.store.conftest import BUCKET, CREDENTIALS, s3_endpoint  # noqa: F401 (the moto server fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUNDS = 2
TIMEOUT_S = 150


@pytest.fixture(scope="module")
def request_json(job_request, tmp_path_factory) -> dict:
    """The test job on the network's lock-step chain, with its tight schedule (2 train blocks, 3 score blocks): what a
    wall clock would need room for on a busy machine, lock-step does not."""
    return job_request.model_copy(update={"job_id": "maths-processes", "rounds": ROUNDS, **LOCKSTEP_SCHEDULE}).model_dump(mode="json")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, job_records):
    path = tmp_path_factory.mktemp("data") / "maths.jsonl"
    path.write_text("".join(json.dumps({"prompt": r.prompt, "response": r.response}) + "\n" for r in job_records))
    return path


def test_network_up_runs_the_job_in_processes_on_the_folder_store(tmp_path, small_testbed, request_json, data_file):
    config = tmp_path / "request.json"
    config.write_text(json.dumps(request_json))
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "moeforge", "network", "up", "--miners", "2", "--validators", "1", "--modes", "full,subset",
         "--model", str(small_testbed[1]), "--data", str(data_file), "--prompt-field", "prompt", "--response-field", "response",
         "--run", str(run), "--config", str(config)],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = read_model(run / "job" / RESULT_FILE, JobRecord)
    network = json.loads((run / "network.json").read_text())
    miners = {m["hotkey"]: m for m in network["members"] if m["role"] == "miner"}
    _check_record(record, set(miners))
    assert {m["mode"] for m in miners.values()} == {"full", "subset"}
    for name, share in ((m["name"], record.contributions.get(h)) for h, m in miners.items()):
        if share is not None:
            assert f"{name} (" in proc.stdout and f"{100 * share:.1f}%" in proc.stdout  # the final table
    assert f"{record.heldout_loss_before:.4f}" in proc.stdout and f"{record.heldout_loss_after:.4f}" in proc.stdout
    _check_roles(run, network, open_chain(network["chain"]))
    assert open_store(network["store"]).exists(record.final_state_digest)


def test_the_same_network_runs_on_the_s3_store(tmp_path, s3_endpoint, job_request, request_json, data_file):  # noqa: F811
    store_url = f"s3://{BUCKET}/network-{uuid.uuid4().hex[:8]}?endpoint={s3_endpoint}"
    plan = NetworkPlan(
        run_dir=tmp_path / "run", request=job_request.model_validate({**request_json, "domain": "maths.jsonl"}),
        data=str(data_file), data_options={"prompt_field": "prompt", "response_field": "response"},
        miner_modes=("full", "quantized"), validator_stakes=(100.0,), store_url=store_url,
    )
    record, net = run_local_network(plan, SALT, credentials=CREDENTIALS, timeout_s=TIMEOUT_S)
    miners = {m.hotkey for m in net.members if m.role == "miner"}
    _check_record(record, miners)
    network = json.loads((plan.run_dir / "network.json").read_text())
    _check_roles(plan.run_dir, network, net.chain)
    timings = net.phase_timings()
    assert set(timings) == set(range(ROUNDS)) and all(t["validator-0"]["score"] > 0 and t["miner-0"]["train"] > 0 for t in timings.values())
    store = open_store(store_url, credentials=CREDENTIALS)
    assert store.exists(record.final_state_digest) and store.exists(record.rounds[0].report)
    assert not (plan.run_dir / "store").exists()  # nothing went to a folder store


def _check_record(record: JobRecord, miners: set[str]) -> None:
    assert [e.round for e in record.rounds] == list(range(ROUNDS))
    assert any(e.outcome == "adopted" for e in record.rounds)
    assert record.heldout_loss_after < record.heldout_loss_before
    assert set(record.contributions) <= miners and sum(record.contributions.values()) == pytest.approx(1.0)
    for entry in record.rounds:
        assert set(entry.scores) <= miners


def _check_roles(run, network: dict, chain) -> None:
    """Every role finished its job; the validator judged both rounds and weighted the miners on chain."""
    for member in network["members"]:
        events = [e["event"] for e in read_events(run / member["run"].rsplit("/", 1)[-1])]
        assert "finished" in events and "failure" not in events, (member["name"], events)
        assert (run / member["run"].rsplit("/", 1)[-1] / "metrics.prom").is_file()
    validator = next(m for m in network["members"] if m["role"] == "validator")
    state = read_model(run / validator["run"].rsplit("/", 1)[-1] / STATE_FILE, ValidatorState)
    assert state.last_round == ROUNDS - 1 and set(state.reports) == set(range(ROUNDS))
    uid = {n.hotkey: n.uid for n in chain.metagraph().neurons}
    weights = chain.weights()[uid[validator["hotkey"]]]
    assert any(weights.get(uid[m["hotkey"]], 0) > 0 for m in network["members"] if m["role"] == "miner")


def test_an_interrupted_network_stops_every_role_process(tmp_path, monkeypatch, job_request, request_json, data_file):
    import moeforge.network.local as local

    started = []

    def start(*args, **kwargs):
        started.append(local_start(*args, **kwargs))
        return started[-1]

    def interrupt(job, head):
        raise KeyboardInterrupt  # as Ctrl-C does, while the network is being followed

    local_start = local.start_local_network
    monkeypatch.setattr(local, "start_local_network", start)
    plan = NetworkPlan(run_dir=tmp_path / "run", request=job_request.model_validate({**request_json, "domain": "maths.jsonl"}),
                       data=str(data_file), data_options={"prompt_field": "prompt", "response_field": "response"},
                       miner_modes=("full",), validator_stakes=(100.0,))
    with pytest.raises(KeyboardInterrupt):
        local.run_local_network(plan, SALT, on_block=interrupt)
    (net,) = started
    assert set(net.procs) == {"owner", "miner-0", "validator-0"}
    assert all(p.poll() is not None for p in net.procs.values())
