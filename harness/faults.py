"""What a fault trial is judged by (tests/network/test_faults.py, bench/faults.py): a survivor's store and record.

The kill points themselves are the roles' seam in `moeforge.network.faults` (`MOEFORGE_FAULT`).
"""

from moeforge.network.commitment import ResultPayload, decode_result
from moeforge.store.protocol import Store


def corrupt_objects(store: Store) -> list[str]:
    """Every object in `store` whose bytes do not hash to its name (a partial or flipped object a reader could see)."""
    bad = []
    for digest in store.digests():
        try:
            store.get(digest)  # re-hashes the bytes; StoreError if they do not match
        except Exception as exc:  # noqa: BLE001 (a scan reports every unreadable object and goes on)
            bad.append(f"{digest}: {exc}")
    return bad


def record_problems(record, rounds: int, miners: set[str]) -> list[str]:
    """What is wrong with a finished job's `JobRecord` (empty when it is valid): every round recorded, the
    contributions going to miners and summing to 1, and the held-out loss lower after the job than before."""
    problems = []
    if record is None:
        return ["no record was written"]
    if [e.round for e in record.rounds] != list(range(rounds)):
        problems.append(f"rounds recorded {[e.round for e in record.rounds]}, expected 0..{rounds - 1}")
    if not set(record.contributions) <= miners:
        problems.append(f"contributions credit non-miners {sorted(set(record.contributions) - miners)}")
    total = sum(record.contributions.values())
    if abs(total - 1.0) > 1e-6:
        problems.append(f"contributions sum to {total:.6f}, not 1")
    if not record.heldout_loss_after < record.heldout_loss_before:
        problems.append(f"held-out loss {record.heldout_loss_before:.4f} → {record.heldout_loss_after:.4f} did not fall")
    return problems


def results_published(chain, job, hotkey: str, r: int) -> set[str]:
    """Every state a validator's on-chain result for round r has named, over the blocks since the round's seed."""
    states = set()
    for block in range(job.schedule.seed_block(r), chain.block() + 1):
        latest = chain.commitment(hotkey, at_block=block)
        payload = decode_result(latest.data) if latest is not None else None
        if isinstance(payload, ResultPayload) and payload.round == r:
            states.add(payload.state_sha256)
    return states


def double_publications(chain, job, validators: set[str]) -> list[str]:
    """Each (validator, round) whose results on chain named more than one state (empty when none did)."""
    return [f"{hotkey[:10]}… published {len(states)} different results for round {r}"
            for hotkey in sorted(validators) for r in range(job.rounds)
            if len(states := results_published(chain, job, hotkey, r)) > 1]
