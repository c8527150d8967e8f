"""Issue 6: roles killed with SIGKILL at named points and restarted, a flipped byte in the store, and a chain that
goes away for a few seconds; each time the job still ends with a valid record and nothing corrupt is readable.

Three real local networks (owner, two miners, a validator, two rounds of 1-second blocks on the small testbed),
each shared by the tests that read it: the miners and the owner killed; the validator killed mid-scoring while a
revealed delta has a flipped byte; the chain's folder renamed away and back, then the validator killed mid-merge.
Faults fire through the test hook `MOEFORGE_FAULT` (moeforge/network/faults.py); `LocalNetwork.wait(restart_killed=
True)` restarts a killed role with its exact command. Nothing sleeps to pass: the tests follow the chain and the
roles' events. Plus, in one process: the hook itself, and a validator killed between publishing and persisting.
"""

import json
import os
import threading
from pathlib import Path

import pytest

from moeforge.chain.keys import keypair_from_uri
from moeforge.errors import ConfigError
from moeforge.network.commitment import decode_result
from harness.faults import corrupt_objects, record_problems, results_published
from moeforge.network.faults import Fault, parse_fault
from moeforge.network.local import LOCKSTEP_SCHEDULE, NetworkPlan, start_local_network
from moeforge.network.observe import Observer, read_events
from moeforge.network.persist import read_model
from moeforge.network.validator import STATE_FILE, ValidatorState
from moeforge.store.local import LocalStore
from tests.network.conftest import SALT

ROUNDS = 2
TIMEOUT_S = 240
network_test = [pytest.mark.integration, pytest.mark.slow]


# --- the hook itself (fast) ------------------------------------------------------------------------------------

def test_a_fault_names_a_role_a_point_and_optionally_a_round():
    assert parse_fault("miner:mid_upload@0") == Fault("miner", "mid_upload", 0)
    assert parse_fault("validator:merge") == Fault("validator", "merge", None)
    assert parse_fault("") is None and parse_fault(None) is None


@pytest.mark.parametrize(("text", "culprit"), [("minr:train", "role 'minr'"), ("miner:merge", "no fault point 'merge'"),
                                               ("owner:mid_job@x", "round 'x'")])
def test_a_bad_fault_names_the_variable_and_what_is_wrong(text, culprit):
    with pytest.raises(ConfigError, match="MOEFORGE_FAULT") as info:
        parse_fault(text)
    assert culprit in str(info.value)


def test_a_fault_fires_once_per_run_folder_and_only_in_its_round(tmp_path, monkeypatch):
    import moeforge.network.observe as observe

    deaths = []
    monkeypatch.setattr(observe, "die", lambda: deaths.append(True))
    fault = Fault("miner", "after_upload", 1)
    obs = Observer("miner", "5Hot", tmp_path, fault=fault)
    obs.round = 0
    obs.reached("after_upload")
    assert deaths == []
    obs.round = 1
    obs.reached("after_upload")
    assert deaths == [True] and [e["event"] for e in read_events(tmp_path)] == ["fault"]
    assert Observer("miner", "5Hot", tmp_path, fault=fault).fault is None  # restarted: already fired here
    assert Observer("validator", "5Hot", tmp_path / "v", fault=fault).fault is None  # another role's fault


# --- a validator killed between publishing and persisting (in one process, on a stepped chain) ------------------

class Killed(BaseException):
    """Stands for SIGKILL in one process: nothing after the point runs."""


@pytest.mark.slow
def test_a_validator_killed_after_publishing_rejudges_the_same_state_and_publishes_nothing_twice(
        tmp_path, job_request, job_records, monkeypatch):
    from harness.inprocess import InProcessNetwork
    from moeforge.network.validator import Validator

    net = InProcessNetwork.create(tmp_path, LocalStore(tmp_path / "store"), job_request.model_copy(update={"rounds": 1}),
                                  job_records, SALT, miner_modes=["full", "full"], validator_stakes=[100.0])
    job = net.publish()
    net.advance_to(job.schedule.round_start(0))
    prepared = [miner.prepare(0) for miner in net.miners]
    assert all(miner.commit(p) for miner, p in zip(net.miners, prepared))
    net.advance_to(job.schedule.commit_deadline(0))
    for miner, p in zip(net.miners, prepared):
        miner.reveal(p)
    net.advance_to(job.schedule.seed_block(0))
    hotkey = net.validator_keys[0].ss58_address

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(Validator, "_persist", killed)  # dies after the result is on chain, before state.json
        with pytest.raises(Killed):
            net.validators[0].score_round(0)
    published = net.chain.commitment(hotkey)
    net.chain.step(1)  # a second result would land in a later block
    restarted = net.restart_validator(0)
    assert restarted.next_round == 0  # state.json never recorded round 0
    report = restarted.score_round(0)
    assert net.chain.commitment(hotkey) == published  # the same result, not published again
    payload = decode_result(published.data)
    assert report.state_sha256 == payload.state_sha256 and report.choice in ("merged", "single")
    assert restarted.state.last_round == 0 and restarted.state.reports[0] == payload.report
    assert [e["event"] for e in read_events(tmp_path / "validator-0")].count("republished") == 1


# --- real networks ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fault_request(job_request):
    """Two rounds on the lock-step chain's tight schedule: a killed role holds the chain (up to the ceiling) until it
    is restarted, so it never comes back to a round that moved on without it."""
    return job_request.model_copy(update={"job_id": "maths-faults", "domain": "maths.jsonl", "rounds": ROUNDS,
                                          **LOCKSTEP_SCHEDULE})


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, job_records):
    path = tmp_path_factory.mktemp("data") / "maths.jsonl"
    path.write_text("".join(json.dumps({"prompt": r.prompt, "response": r.response}) + "\n" for r in job_records))
    return path


def _run(run: Path, request, data_file, *, faults=None, chain_url=None, on_block=None):
    """Run the job to its record, restarting killed roles; `on_block(net, job, head)` on each poll."""
    plan = NetworkPlan(run_dir=run, request=request, data=str(data_file),
                       data_options={"prompt_field": "prompt", "response_field": "response"},
                       miner_modes=("full", "full"), validator_stakes=(100.0,), chain_url=chain_url)
    net = start_local_network(plan, SALT, faults=faults)
    try:
        follow = (lambda job, head: on_block(net, job, head)) if on_block is not None else None
        return net.wait(on_block=follow, restart_killed=True, poll_s=0.2, timeout_s=TIMEOUT_S), net
    finally:
        net.stop()


def _events(net, name: str) -> list[dict]:
    return read_events(net.member(name).run_dir)


def _miners(net) -> set[str]:
    return {m.hotkey for m in net.members if m.role == "miner"}


def _check_job(record, net, *, corrupt_expected=frozenset()):
    """The record is valid and every object in the store re-hashes to its name (bar the ones a test corrupted)."""
    assert record_problems(record, ROUNDS, _miners(net)) == []
    corrupt = {line.split(":")[0] for line in corrupt_objects(LocalStore(net.plan.run_dir / "store"))}
    assert corrupt == set(corrupt_expected)


def _fault_then_restart(events: list[dict], point: str) -> tuple[int, int]:
    """(the round the fault at `point` fired in, the index of the restarted process's 'started' event); asserts
    that it fired once, that the role came back, and that it finished without a failure."""
    names = [e["event"] for e in events]
    fired = [i for i, e in enumerate(events) if e["event"] == "fault" and e["point"] == point]
    assert len(fired) == 1, names
    restarted = names.index("started", fired[0])
    assert "failure" not in names and names[-1] == "finished", names
    return events[fired[0]]["round"], restarted


@pytest.fixture(scope="module")
def killed_miners_and_owner(tmp_path_factory, fault_request, data_file):
    """miner-0 killed mid-training in round 0, miner-1 in the middle of its first upload, the owner while it waits
    in round 0."""
    run = tmp_path_factory.mktemp("faults") / "run"
    record, net = _run(run, fault_request, data_file,
                       faults={"miner-0": "mid_training@0", "miner-1": "mid_upload", "owner": "mid_job@0"})
    return record, net


@pytest.mark.integration
@pytest.mark.slow
def test_miners_and_the_owner_killed_mid_round_still_finish_the_job(killed_miners_and_owner):
    record, net = killed_miners_and_owner
    _check_job(record, net)
    assert net.restarts == {"miner-0": 1, "miner-1": 1, "owner": 1}


@pytest.mark.integration
@pytest.mark.slow
def test_a_miner_killed_mid_training_commits_in_time_or_skips_the_round_cleanly(killed_miners_and_owner):
    record, net = killed_miners_and_owner
    events = _events(net, "miner-0")
    _, restarted = _fault_then_restart(events, "mid_training")
    after = events[restarted:]
    round0 = [e["event"] for e in after if e.get("round") == 0]  # retrained (a kept delta exists only once committed)
    assert round0 in (["trained", "committed", "revealed"], ["trained", "missed_deadline"], []), round0
    assert [e["event"] for e in after if e.get("round") == 1][:1] == ["trained"]
    hotkey = net.member("miner-0").hotkey
    assert all(r.rejections.get(hotkey) is None or r.rejections[hotkey].reason != "commitment_mismatch" for r in record.rounds)


@pytest.mark.integration
@pytest.mark.slow
def test_a_miner_killed_mid_upload_leaves_nothing_readable_and_never_reveals_other_bytes(killed_miners_and_owner):
    record, net = killed_miners_and_owner
    events = _events(net, "miner-1")
    r, restarted = _fault_then_restart(events, "mid_upload")
    committed = next(e for e in events if e["event"] == "committed" and e["round"] == r)
    store = LocalStore(net.plan.run_dir / "store")
    partial = list((store.root / "sha256" / committed["digest"][:2]).glob(".tmp-*"))
    assert partial and all(p.stat().st_size > 0 for p in partial)  # the kill left half an object behind, unnamed
    after = [e["event"] for e in events[restarted:] if e.get("round") == r]
    verdict = record.rounds[r].rejections.get(net.member("miner-1").hotkey)
    if after == ["resumed", "revealed"]:  # restarted in time: revealed the very bytes it had committed to
        assert store.get(committed["digest"]) and (verdict is None or verdict.reason == "no_improvement")
    else:  # too late to reveal: the round is given up, and the validator found nothing under the committed digest
        assert after in (["resumed", "skipped"], []), after
        assert verdict is not None and verdict.reason == "no_reveal" and not store.exists(committed["digest"])


@pytest.mark.integration
@pytest.mark.slow
def test_the_owner_killed_mid_job_resumes_its_job_and_writes_the_record(killed_miners_and_owner):
    record, net = killed_miners_and_owner
    events = _events(net, "owner")
    names = [e["event"] for e in events]
    assert names.count("published") == 1 and "republished" not in names  # one job, never a second
    deposit = "deposited" if record.accepted_rounds else "not_deposited"  # the library learns of the job once
    assert names[names.index("fault"):] == ["fault", "resumed", "finished", deposit]
    assert net.chain.commitment(record.owner) is not None
    assert json.loads((net.owner.run_dir / "result.json").read_text())["job_digest"] == record.job_digest


@pytest.fixture(scope="module")
def killed_validator_and_a_flipped_byte(tmp_path_factory, fault_request, data_file):
    """The validator killed mid-scoring in round 1; the first delta miner-1 reveals gets a flipped byte in the store
    after it is revealed, before the validator reads it; and miner-0 killed from outside the moment its events say
    it trained in round 1 (before or after its commitment landed). The test takes part in the lock-step chain as a
    watcher neuron, idle one block at a time, so the chain cannot reach the scoring block before the byte is flipped."""
    run = tmp_path_factory.mktemp("faults") / "run"
    flipped: list[tuple[int, str]] = []
    watcher = keypair_from_uri("//moeforge/test/watcher").ss58_address

    def flip_and_kill(net, job, head):
        net.chain.register(watcher)  # idempotent; until its first idle the chain waits for it
        events = read_events(run / "miner-1")
        revealed = next((e["round"] for e in events if e["event"] == "revealed"), None)
        if not flipped and revealed is not None:
            digest = next(e["digest"] for e in events if e["event"] == "committed" and e["round"] == revealed)
            _flip_a_byte(run / "store" / "sha256" / digest[:2] / digest)
            flipped.append((revealed, digest))
        if not net.restarts.get("miner-0") and any(e["event"] == "trained" and e["round"] == 1 for e in read_events(run / "miner-0")):
            net.kill("miner-0")  # the supervisor in wait() restarts it on its next poll
        net.chain.idle(watcher, net.chain.block() + 1)

    record, net = _run(run, fault_request, data_file, on_block=flip_and_kill, faults={"validator-0": "mid_score@1"})
    return record, net, flipped


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(path, 0o644)  # stored objects are read-only
    path.write_bytes(bytes(data))
    os.chmod(path, 0o444)


def _check_validator_resumed(record, net, point: str) -> None:
    """The validator was killed in round 1, restarted from round 1 (not 0) out of state.json, and published at most
    one result for the round (the one the record holds) or recorded the round as missed."""
    events = _events(net, "validator-0")
    r, restarted = _fault_then_restart(events, point)
    assert r == 1 and events[restarted]["first_round"] == 1  # not from round 0: round 0 was in state.json
    assert events[restarted - 1]["event"] == "resumed" and events[restarted - 1]["last_round"] == 0
    state = read_model(net.member("validator-0").run_dir / STATE_FILE, ValidatorState)
    assert state.last_round == ROUNDS - 1 and 0 in state.reports
    assert set(state.reports) | set(state.missed) == set(range(ROUNDS))
    hotkey = net.member("validator-0").hotkey
    published = _results_published(net, hotkey, 1)
    assert len(published) <= 1  # never two different results for one round
    if 1 in state.reports:  # re-judged in time: its one result is the one the record holds
        assert record.rounds[1].validators == {hotkey: published.pop()}


@pytest.mark.integration
@pytest.mark.slow
def test_a_validator_killed_mid_scoring_resumes_the_round_from_its_persisted_state(killed_validator_and_a_flipped_byte):
    record, net, flipped = killed_validator_and_a_flipped_byte
    _check_job(record, net, corrupt_expected={digest for _, digest in flipped})
    _check_validator_resumed(record, net, "mid_score")


def _results_published(net, hotkey: str, r: int) -> set[str]:
    return results_published(net.chain, net.job(), hotkey, r)


@pytest.mark.integration
@pytest.mark.slow
def test_a_flipped_byte_in_a_revealed_delta_is_detected_on_read_and_refused_with_a_reason(killed_validator_and_a_flipped_byte):
    record, net, flipped = killed_validator_and_a_flipped_byte
    (r, digest), = flipped
    rejection = record.rounds[r].rejections[net.member("miner-1").hotkey]
    assert rejection.reason == "malformed" and "corrupt" in rejection.detail and digest in rejection.detail
    assert digest not in record.rounds[r].accepted and "failure" not in [e["event"] for e in _events(net, "validator-0")]


@pytest.mark.integration
@pytest.mark.slow
def test_a_miner_killed_from_outside_after_training_restarts_and_never_reveals_other_bytes(killed_validator_and_a_flipped_byte):
    record, net, _ = killed_validator_and_a_flipped_byte
    assert net.restarts.get("miner-0") == 1
    events = _events(net, "miner-0")
    names = [e["event"] for e in events]
    assert names.count("started") == 2 and names[-1] == "finished" and "failure" not in names
    restarted = [i for i, name in enumerate(names) if name == "started"][1]
    round1 = [e["event"] for e in events[restarted:] if e.get("round") == 1]
    assert round1 in (["resumed", "revealed"], ["resumed", "skipped"], ["resumed", "committed", "revealed"],
                      ["resumed", "missed_deadline"], ["trained", "committed", "revealed"], ["trained", "missed_deadline"],
                      []), round1
    rejection = record.rounds[1].rejections.get(net.member("miner-0").hotkey)
    assert rejection is None or rejection.reason in ("no_reveal", "no_improvement"), rejection


@pytest.mark.integration
@pytest.mark.slow
def test_a_chain_unreachable_for_seconds_is_retried_with_backoff_and_a_validator_killed_mid_merge_resumes(
        tmp_path, fault_request, data_file):
    chain_dir = tmp_path / "chain"
    chain_dir.mkdir()
    away = tmp_path / "chain.away"
    outage: list[threading.Timer] = []

    def take_the_chain_away(net, job, head):
        if outage or job is None or head < job.schedule.round_start(0) + 1:
            return
        chain_dir.rename(away)  # every role's next connection fails: the file is not there
        outage.append(threading.Timer(3.0, away.rename, (chain_dir,)))
        outage[0].start()

    record, net = _run(tmp_path / "run", fault_request, data_file, on_block=take_the_chain_away,
                       chain_url=f"local://{chain_dir / 'chain.sqlite'}?lockstep_s=60", faults={"validator-0": "mid_merge@1"})
    outage[0].join()
    _check_job(record, net)
    _check_validator_resumed(record, net, "mid_merge")
    logs = {m.name: " ".join((m.run_dir / "process.log").read_text().split()) for m in net.members}  # rich wraps lines
    retried = [name for name, text in logs.items() if "chain unreachable" in text and "retry 1 in" in text]
    assert len(retried) >= 2, {name: text[-500:] for name, text in logs.items()}
    assert net.restarts == {"validator-0": 1}  # the chain outage itself killed no one
    for m in net.members:
        assert "failure" not in [e["event"] for e in read_events(m.run_dir)], m.name
