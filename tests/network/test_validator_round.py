import pytest
import torch

from moeforge.chain.keys import keypair_from_uri
from moeforge.chain.local import LocalChain
from moeforge.model.slices import extract_slice
from moeforge.network.checks import Reject, Revealed, Submission, Verdict, expected_layout
from moeforge.network.commitment import commitment, encode_commitment, encode_job, encode_result, encode_reveal
from moeforge.network.transport import pack
from moeforge.network.validator_round import fetch_submission, read_submissions
from moeforge.store.local import LocalStore
from moeforge.store.protocol import sha256_hex
from tests.model.tiny import tiny_model
from tests.network.conftest import make_job

JOB = make_job()  # round 0: blocks 10-19; commit deadline 15, reveal deadline 17
KEYS = {name: keypair_from_uri(f"//moeforge/{name}") for name in ("ok", "late", "silent", "liar", "other_round", "owner", "validator")}
D1, D2 = "d1" * 32, "d2" * 32


@pytest.fixture
def chain(tmp_path):
    chain = LocalChain(tmp_path / "chain.sqlite", block_seconds=0)
    for key in KEYS.values():
        chain.register(key.ss58_address)
    return chain


def _at(chain, block: int) -> None:
    """Move the head to block − 1, so the next write lands in `block`."""
    chain.step(block - 1 - chain.block())


def _commit(chain, name: str, digest: str, r: int = 0) -> None:
    chain.commit(KEYS[name], encode_commitment(commitment(digest, KEYS[name].ss58_address, r), r))


def test_each_submission_is_judged_against_the_deadlines_and_bystanders_are_not_listed(chain):
    _at(chain, 8)
    chain.commit(KEYS["owner"], encode_job(D1))
    chain.commit(KEYS["other_round"], encode_reveal(D1, 5))  # a stale round's reveal
    _at(chain, 12)
    for name in ("ok", "silent", "liar"):
        _commit(chain, name, D1)
    _at(chain, 16)
    _commit(chain, "late", D1)  # one block after the commit deadline
    chain.commit(KEYS["ok"], encode_reveal(D1, 0))
    chain.commit(KEYS["liar"], encode_reveal(D2, 0))
    chain.commit(KEYS["validator"], encode_result(D1, D2, 0))
    _at(chain, 19)
    found = read_submissions(chain, JOB, 0, exclude={KEYS["validator"].ss58_address})
    by_name = {name: found.get(key.ss58_address) for name, key in KEYS.items()}
    assert isinstance(by_name["ok"], Revealed) and by_name["ok"].digest == D1 and by_name["ok"].commit_block == 12
    assert by_name["late"].reject == Reject.LATE and "block 16" in by_name["late"].detail
    assert by_name["silent"].reject == Reject.NO_REVEAL
    assert by_name["liar"].reject == Reject.COMMITMENT_MISMATCH
    assert by_name["owner"] is None and by_name["other_round"] is None and by_name["validator"] is None


@pytest.fixture
def current():
    return extract_slice(tiny_model("deepseek_v2"), JOB.slots, JOB.base_fingerprint)


def _delta(current, scale: float = 1e-3, extra: dict | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {k: scale * torch.randn(shape, generator=g, dtype=dtype) for k, (shape, dtype) in expected_layout(current).items()}
    return {**out, **(extra or {})}


def _fetch(store, current, tensors, *, signer="ok", hotkey="ok", round=0, max_bytes=1 << 24, put=True):
    data = pack(tensors, keypair=KEYS[signer], job=JOB.job_id, round=round, kind="delta")
    digest = store.put(data) if put else sha256_hex(data)
    rev = Revealed(KEYS[hotkey].ss58_address, digest, b"\0" * 32, 12, 16)
    return fetch_submission(store, rev, job=JOB, round=0, layout=expected_layout(current), norm_bound=1e9, max_bytes=max_bytes)


def test_a_good_delta_is_fetched_and_every_bad_one_gets_the_verdict_that_names_its_problem(tmp_path, current):
    store = LocalStore(tmp_path / "store")
    good = _delta(current)
    assert isinstance(_fetch(store, current, good), Submission)
    assert _fetch(store, current, good, put=False).reject == Reject.NO_REVEAL
    assert _fetch(store, current, good, max_bytes=100).reject == Reject.TOO_LARGE
    signed_by_other = _fetch(store, current, good, signer="liar")
    assert signed_by_other.reject == Reject.BAD_SIGNATURE and KEYS["liar"].ss58_address in signed_by_other.detail
    assert _fetch(store, current, good, round=1).reject == Reject.MALFORMED
    foreign = {"model.layers.1.mlp.experts.7.gate_proj.weight": torch.zeros(16, 32, dtype=torch.float64)}
    wrong = _fetch(store, current, _delta(current, extra=foreign))
    assert isinstance(wrong, Verdict) and wrong.reject == Reject.WRONG_KEYS and "experts.7" in wrong.detail


def test_with_parts_only_a_delta_over_exactly_the_assigned_part_is_accepted(tmp_path):
    from moeforge.model.slices import restricted
    from moeforge.network.observe import Observer
    from moeforge.network.validator_round import fetch_all

    job = make_job(parts=2)
    current = extract_slice(tiny_model("deepseek_v2"), job.slots, job.base_fingerprint)
    store = LocalStore(tmp_path / "store")
    names = ("ok", "late", "silent", "liar")
    mine = {n: job.part_of(0, KEYS[n].ss58_address) for n in names}
    offers = {"ok": mine["ok"], "late": 1 - mine["late"], "silent": None, "liar": mine["liar"]}  # None: every slot
    revealed = []
    for n in names:
        piece = current if offers[n] is None else restricted(current, job.part_slots(offers[n]))
        tensors = _delta(piece)
        if n == "liar":
            tensors = {k: 100.0 * t for k, t in tensors.items()}  # over the part's own norm bound
        data = pack(tensors, keypair=KEYS[n], job=job.job_id, round=0, kind="delta")
        revealed.append(Revealed(KEYS[n].ss58_address, store.put(data), b"\0" * 32, 12, 16))
    job = job.model_copy(update={"norm_bound": 0.5})
    submissions, refused, errors = fetch_all(store, revealed, job=job, round=0, current=current,
                                             observer=Observer("validator", KEYS["validator"].ss58_address))
    assert [s.hotkey for s in submissions] == [KEYS["ok"].ss58_address] and not errors, refused
    assert refused[KEYS["late"].ss58_address].reject == Reject.WRONG_KEYS  # the other part
    assert refused[KEYS["silent"].ss58_address].reject == Reject.WRONG_KEYS  # every slot, not its part
    assert refused[KEYS["liar"].ss58_address].reject == Reject.NORM_BOUND
