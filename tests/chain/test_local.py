"""Tests for moeforge/chain/local.py: the block clock, stepping, admin rules, errors, and many processes on one file."""

import hashlib
import multiprocessing
import sqlite3
import time

import pytest

from moeforge.chain.keys import keypair_from_seed
from moeforge.chain.local import LocalChain
from moeforge.errors import ChainError, ChainUnavailable, ConfigError

WORKERS, HOTKEYS, COMMITS = 4, 3, 5  # per process: 3 hotkeys, 5 commits each


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_blocks_advance_with_wall_time_at_the_interval(tmp_path):
    clock = Clock()
    chain = LocalChain(tmp_path / "c.sqlite", block_seconds=12, clock=clock)
    assert chain.block() == 0
    clock.now += 11.9
    assert chain.block() == 0
    clock.now += 0.1
    assert chain.block() == 1
    clock.now += 12 * 10
    assert chain.block() == 11
    assert chain.step(5) == 16  # stepping adds to the wall clock
    clock.now += 12
    assert chain.block() == 17


def test_manual_clock_moves_only_by_step(tmp_path):
    clock = Clock()
    chain = LocalChain(tmp_path / "c.sqlite", block_seconds=0, clock=clock)
    clock.now += 3600
    assert chain.block() == 0
    assert chain.step() == 1
    assert chain.step(4) == 5
    assert chain.block() == 5
    with pytest.raises(ChainError, match="step 0"):
        chain.step(0)


def _keys(n):
    return [keypair_from_seed(hashlib.sha256(f"lockstep-{i}".encode()).digest()).ss58_address for i in range(n)]


def test_a_lockstep_chain_jumps_to_the_earliest_wake_up_once_every_neuron_is_idle(tmp_path):
    clock = Clock()
    chain = LocalChain(tmp_path / "c.sqlite", lockstep_s=30, clock=clock)
    a, b, c = _keys(3)
    for hotkey in (a, b, c):
        chain.register(hotkey)
    assert chain.idle(a, 5) == 0 and chain.idle(b, 9) == 0  # c has said nothing: it may still be busy
    clock.now += 29.9
    assert chain.block() == 0  # however long it takes, below the ceiling
    assert chain.idle(c, 7) == 5  # now all three are idle: the head goes to the earliest, a's 5
    assert chain.idle(a, 6) == 6  # a wakes at 5, works, then waits for 6 (b still idle to 9, c to 7)
    assert chain.idle(a, None) == 7  # a is done for good; c's 7 is the next wake-up
    assert chain.idle(c, None) == 9 and chain.idle(b, None) == 9  # all done: nothing moves the head any more
    assert chain.block() == 9


def test_a_lockstep_chain_moves_one_block_per_ceiling_while_a_neuron_is_busy_or_dead(tmp_path):
    clock = Clock()
    chain = LocalChain(tmp_path / "c.sqlite", lockstep_s=30, clock=clock)
    a, b = _keys(2)
    chain.register(a), chain.register(b)
    chain.idle(a, 100)  # b never says it is idle (killed, say)
    clock.now += 30
    assert chain.block() == 1
    clock.now += 65
    assert chain.block() == 3
    assert chain.idle(b, 4) == 4  # b is back and idle: lock-step again, from where the ceiling left the head
    clock.now += 29
    assert chain.block() == 4


def test_lockstep_settings_persist_and_conflicts_are_refused(tmp_path):
    LocalChain(tmp_path / "c.sqlite", lockstep_s=30)
    assert LocalChain(tmp_path / "c.sqlite").lockstep_s == 30
    with pytest.raises(ConfigError, match="runs with lockstep_s=30, not 5"):
        LocalChain(tmp_path / "c.sqlite", lockstep_s=5)
    with pytest.raises(ConfigError, match="a lock-step chain has no wall clock"):
        LocalChain(tmp_path / "d.sqlite", lockstep_s=30, block_seconds=12)
    with pytest.raises(ConfigError, match="lockstep_s=0"):
        LocalChain(tmp_path / "e.sqlite", lockstep_s=0)
    wall = LocalChain(tmp_path / "w.sqlite", block_seconds=0)
    (a,) = _keys(1)
    wall.register(a)
    assert wall.idle(a, 50) == 0  # other clocks only record it


def test_idle_from_an_unregistered_hotkey_is_refused(tmp_path):
    chain = LocalChain(tmp_path / "c.sqlite", lockstep_s=30)
    with pytest.raises(ChainError, match="not registered"):
        chain.idle(_keys(1)[0], 3)


def test_settings_and_hashes_persist_across_opens(tmp_path):
    path = tmp_path / "c.sqlite"
    first = LocalChain(path, block_seconds=0)
    first.step(3)
    again = LocalChain(path)  # another process would open it the same way
    assert (again.block_seconds, again.block()) == (0.0, 3)
    assert [again.block_hash(b) for b in range(4)] == [first.block_hash(b) for b in range(4)]
    other = LocalChain(tmp_path / "other.sqlite", block_seconds=0)
    other.step(3)
    assert other.block_hash(3) != first.block_hash(3)  # a fresh genesis seed per chain


def test_a_chain_made_from_a_genesis_seed_repeats_its_hashes_and_a_wrong_seed_is_refused(tmp_path):
    chains = [LocalChain(tmp_path / f"{name}.sqlite", block_seconds=0, genesis_seed=seed)
              for name, seed in (("a", b"\1" * 32), ("b", b"\1" * 32), ("c", b"\2" * 32))]
    for chain in chains:
        chain.step(3)
    a, b, c = ([chain.block_hash(n) for n in range(4)] for chain in chains)
    assert a == b and a[3] != c[3]
    assert LocalChain(tmp_path / "a.sqlite", genesis_seed=b"\2" * 32).block_hash(3) == a[3]  # an existing chain keeps its own
    with pytest.raises(ConfigError, match="genesis_seed of 5 bytes"):
        LocalChain(tmp_path / "d.sqlite", block_seconds=0, genesis_seed=b"short")


def test_asking_an_existing_chain_for_another_interval_is_refused(tmp_path):
    LocalChain(tmp_path / "c.sqlite", block_seconds=0)
    with pytest.raises(ConfigError, match=r"block_seconds=0, not 12"):
        LocalChain(tmp_path / "c.sqlite", block_seconds=12)


def test_negative_interval_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="block_seconds=-1"):
        LocalChain(tmp_path / "c.sqlite", block_seconds=-1)


def test_a_chain_path_that_cannot_be_a_file_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="file"):
        LocalChain(tmp_path / "file" / "c.sqlite", block_seconds=0)


def test_a_chain_folder_that_went_away_is_unavailable_and_comes_back(tmp_path):
    folder = tmp_path / "mnt"
    chain = LocalChain(folder / "c.sqlite", block_seconds=0)
    chain.step(2)
    folder.rename(tmp_path / "elsewhere")  # as when the volume holding it is unmounted
    with pytest.raises(ChainUnavailable, match=rf"unable to open database file \(its folder {folder} is missing\)"):
        chain.block()
    with pytest.raises(ChainUnavailable):
        chain.step()
    assert not folder.exists()  # nothing re-created in its place
    (tmp_path / "elsewhere").rename(folder)
    assert chain.block() == 2


def test_a_deleted_chain_file_is_unavailable_not_silently_replaced_by_an_empty_chain(tmp_path):
    path = tmp_path / "c.sqlite"
    chain = LocalChain(path, block_seconds=0)
    chain.step(3)
    path.rename(tmp_path / "moved")
    with pytest.raises(ChainUnavailable, match=r"\(the file is missing\)\. Check that the file and its folder"):
        chain.block()
    assert not path.exists()
    (tmp_path / "moved").rename(path)
    assert chain.block() == 3


def test_a_chain_path_that_became_a_folder_is_unavailable(local_chain):
    local_chain.path.rename(local_chain.path.with_suffix(".away"))
    local_chain.path.mkdir()
    with pytest.raises(ChainUnavailable, match=r"\(the path is not a file\)"):
        local_chain.metagraph()


def test_a_write_lock_held_past_the_busy_timeout_is_unavailable(tmp_path, alice):
    chain = LocalChain(tmp_path / "c.sqlite", block_seconds=0, busy_timeout_s=0.01)
    chain.register(alice.ss58_address)
    other = sqlite3.connect(tmp_path / "c.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        with pytest.raises(ChainUnavailable, match="database is locked. Another process held the write lock for over"):
            chain.commit(alice, b"x")
        assert chain.block() == 0  # WAL: reads go on while a writer holds the lock
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert chain.commit(alice, b"x") == 1


def test_a_disk_io_error_is_unavailable(local_chain, monkeypatch):
    def broken_disk(*args, **kwargs):
        error = sqlite3.OperationalError("disk I/O error")
        error.sqlite_errorname = "SQLITE_IOERR_READ"
        raise error

    monkeypatch.setattr(sqlite3, "connect", broken_disk)
    with pytest.raises(ChainUnavailable, match="disk I/O error"):
        local_chain.block()


def test_a_file_that_is_not_a_chain_is_a_permanent_error(local_chain):
    local_chain.path.write_bytes(b"this is not an sqlite file" * 100)
    with pytest.raises(ChainError, match="file is not a database") as caught:
        local_chain.block()
    assert not isinstance(caught.value, ChainUnavailable)  # retrying would not help


def test_a_second_commit_in_the_same_block_replaces_the_first(local_chain, alice):
    local_chain.register(alice.ss58_address)
    first = local_chain.commit(alice, b"first")
    assert local_chain.commit(alice, b"second") == first
    local_chain.step()
    assert local_chain.commitment(alice.ss58_address, at_block=first).data == b"second"


def test_state_as_of_the_head_is_final(local_chain, alice):
    local_chain.register(alice.ss58_address)
    head = local_chain.block()
    landed = local_chain.commit(alice, b"late")
    assert landed == head + 1  # a write lands in the next block, never in one a reader may have read
    assert local_chain.commitments(at_block=head) == {}


def test_register_is_idempotent_and_keeps_the_owner(local_chain, alice, bob):
    assert local_chain.register(alice.ss58_address, bob.ss58_address) == 0
    assert local_chain.register(alice.ss58_address) == 0
    assert local_chain.metagraph().by_uid(0).coldkey == bob.ss58_address
    with pytest.raises(ChainError, match=f"already registered as uid 0 under coldkey {bob.ss58_address}"):
        local_chain.register(alice.ss58_address, alice.ss58_address)


def test_register_refuses_a_malformed_address(local_chain):
    with pytest.raises(ChainError, match="'5notanaddress' is not an ss58 address"):
        local_chain.register("5notanaddress")


@pytest.mark.parametrize("amount", [0.0, -3.0, float("nan"), float("inf")])
def test_bad_stake_amounts_are_refused(local_chain, alice, amount):
    local_chain.register(alice.ss58_address)
    with pytest.raises(ChainError, match="expected a finite number > 0"):
        local_chain.add_stake(alice.ss58_address, amount)
    assert local_chain.metagraph().by_uid(0).stake == 0


def test_stake_for_an_unregistered_hotkey_names_it(local_chain, carol):
    with pytest.raises(ChainError, match=f"{carol.ss58_address} is not registered"):
        local_chain.add_stake(carol.ss58_address, 1.0)


def test_permits_go_to_the_top_staked_up_to_max_validators(tmp_path):
    chain = LocalChain(tmp_path / "c.sqlite", block_seconds=0, max_validators=2)
    keys = [keypair_from_seed(hashlib.sha256(bytes([i])).digest()).ss58_address for i in range(4)]
    for hotkey, stake in zip(keys, [5.0, 9.0, 5.0, 0.0]):
        chain.register(hotkey)
        if stake:
            chain.add_stake(hotkey, stake)
    assert [n.validator_permit for n in chain.metagraph().neurons] == [True, True, False, False]  # tie → lower uid


def _worker(path: str, worker: int, start, errors) -> None:
    """One process: register its hotkeys, then commit, step and stake, each a separate write."""
    try:
        chain = LocalChain(path)
        start.wait(timeout=60)
        keypairs = [keypair_from_seed(hashlib.sha256(f"{worker}/{j}".encode()).digest()) for j in range(HOTKEYS)]
        for keypair in keypairs:
            chain.register(keypair.ss58_address)
        for m in range(COMMITS):
            for keypair in keypairs:
                chain.commit(keypair, f"{worker}/{m}".encode())
                chain.add_stake(keypair.ss58_address, 1.0)
            chain.step(1)  # so this process's next commits land in a later block
    except Exception as exc:  # reported to the test, which fails on any
        errors.put(f"worker {worker}: {type(exc).__name__}: {exc}")


@pytest.mark.integration
def test_many_processes_write_one_chain_without_lost_writes(tmp_path):
    path = tmp_path / "shared.sqlite"
    chain = LocalChain(path, block_seconds=0)
    ctx = multiprocessing.get_context("spawn")
    start, errors = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(path), w, start, errors)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    start.set()
    deadline = time.monotonic() + 60
    for p in procs:
        p.join(timeout=max(0.1, deadline - time.monotonic()))
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    failures = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert failures == []

    graph = chain.metagraph()
    assert [n.uid for n in graph.neurons] == list(range(WORKERS * HOTKEYS))  # no uid handed out twice
    assert all(n.stake == COMMITS for n in graph.neurons)  # every increment counted
    assert chain.block() == WORKERS * COMMITS  # every step counted
    for neuron in graph.neurons:  # each hotkey's full history, newest first
        worker = next(w for w in range(WORKERS) if any(
            keypair_from_seed(hashlib.sha256(f"{w}/{j}".encode()).digest()).ss58_address == neuron.hotkey
            for j in range(HOTKEYS)))
        history, c = [], chain.commitment(neuron.hotkey)
        while c is not None:
            history.append(c.data)
            c = chain.commitment(neuron.hotkey, at_block=c.block - 1) if c.block > 0 else None
        assert history == [f"{worker}/{m}".encode() for m in reversed(range(COMMITS))]
