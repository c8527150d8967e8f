"""The embedded default chain: a SQLite ledger of neurons, stake, commitments and weights.

DESIGN.md "The network". The block clock runs with wall time: block = steps taken + whole
`block_seconds` since genesis (12 s, as on Bittensor); `block_seconds=0` is a manual clock that only
`step(n)` moves (tests). A lock-step chain (`lockstep_s=C`, for local networks) moves when its
neurons let it: each role says `idle(hotkey, until)` when it has nothing to do before block `until`
(None: nothing ever again), and once every registered neuron is idle the head jumps to the earliest
`until`, so no role misses a deadline because the machine is busy; if some neuron stays busy (or
dead) for C seconds, the head moves one block anyway, so a crashed role cannot stall the network,
and a restarted one catches up. Block hashes chain sha256 over the previous hash, the block number and
a random genesis seed, so they are stable, distinct, and refused until their block exists (anyone who
can read this file can compute them early: a dev chain, not a randomness beacon).

Rules, as close to Bittensor's as a ledger needs: a write lands in the block after the head (so state
as of block b is final once the head reaches b); one commitment per hotkey per block, and a second in
the same block replaces the first (Bittensor would refuse it under its rate limit); commitments keep
their history, so any past block can be read; validator permits go to the `max_validators` (default
64, Bittensor's default) neurons with the most stake, among those with stake > 0, ties to the lower uid.
There is no deregistration: uids count up from 0.

Several processes share one file: WAL journal, a busy timeout, one short connection per call, and
`BEGIN IMMEDIATE` for every write, so writers queue instead of failing or losing updates.

Errors: a file that cannot be reached right now (its folder gone or unmounted, the file missing or not
openable, a disk I/O error, the write lock held past the busy timeout) → `ChainUnavailable`, which
`chain.retry` retries; anything else SQLite refuses → `ChainError`. Each write is one transaction, so
an error means it did not land. Once created, the file is opened read-write only, never re-created:
a chain file that vanishes for a while is reported unreachable, not replaced by an empty chain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from moeforge.chain.keys import check_ss58
from moeforge.chain.protocol import (
    Commitment,
    Metagraph,
    Neuron,
    check_commitment,
    normalise_weights,
    not_registered,
    require_permit,
    require_uids,
)
from moeforge.errors import ChainError, ChainUnavailable, ConfigError

if TYPE_CHECKING:
    from bittensor.sp_core import Keypair

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_BLOCK_SECONDS = 12.0
DEFAULT_MAX_VALIDATORS = 64
DEFAULT_NETUID = 1
_NO_BLOCK_LIMIT = 2**62
# SQLite result codes (extended ones share the prefix) for a file that cannot be reached right now
_UNREACHABLE = ("SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_PROTOCOL")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS neurons (
    uid INTEGER PRIMARY KEY, hotkey TEXT NOT NULL UNIQUE, coldkey TEXT NOT NULL,
    stake REAL NOT NULL DEFAULT 0, registered_block INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS commitments (
    hotkey TEXT NOT NULL, block INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (hotkey, block));
CREATE TABLE IF NOT EXISTS weights (
    uid INTEGER NOT NULL, block INTEGER NOT NULL, vector TEXT NOT NULL, PRIMARY KEY (uid, block));
CREATE TABLE IF NOT EXISTS idle (hotkey TEXT PRIMARY KEY, until INTEGER);
"""


class LocalChain:
    """A chain in one SQLite file; implements `protocol.Chain` plus the admin methods a local network needs."""

    def __init__(
        self,
        path: str | Path,
        *,
        block_seconds: float | None = None,
        lockstep_s: float | None = None,
        netuid: int = DEFAULT_NETUID,
        max_validators: int = DEFAULT_MAX_VALIDATORS,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 30.0,
        genesis_seed: bytes | None = None,
    ) -> None:
        """Open the chain at PATH, creating it (with these settings) if it does not exist.

        An existing chain keeps the settings it was created with; asking for another
        `block_seconds` or `lockstep_s` → ConfigError. `lockstep_s` (> 0) makes a lock-step chain whose
        idle-less blocks come every `lockstep_s` seconds (block_seconds must then be 0). `clock` (seconds,
        like `time.time`) is for tests, and so is `genesis_seed` (32 bytes; random when left out): a new chain's block
        hashes follow from it (an existing chain keeps its own), so a run that draws its samples from them can be
        repeated exactly.
        """
        if genesis_seed is not None and len(genesis_seed) != 32:
            raise ConfigError(f"genesis_seed of {len(genesis_seed)} bytes: expected 32.")
        if block_seconds is not None and (not math.isfinite(block_seconds) or block_seconds < 0):
            raise ConfigError(f"block_seconds={block_seconds}: expected a number ≥ 0 (0 = manual clock, stepped).")
        if lockstep_s is not None and (not math.isfinite(lockstep_s) or lockstep_s <= 0):
            raise ConfigError(f"lockstep_s={lockstep_s}: expected a number of seconds > 0 (the longest a block waits).")
        if lockstep_s is not None and block_seconds:
            raise ConfigError(f"lockstep_s={lockstep_s:g} with block_seconds={block_seconds:g}: a lock-step chain has no "
                              "wall clock; pass block_seconds=0 (or leave it out) with lockstep_s.")
        if lockstep_s is not None:
            block_seconds = 0.0
        self.path = Path(path).expanduser()
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._create = True  # only while opening: afterwards a missing file is unreachable, not new
        self._hashes: list[bytes] = []  # block → hash, filled on demand
        self._hashes_lock = threading.Lock()
        meta = self._open_or_create(block_seconds, netuid, max_validators, lockstep_s, genesis_seed or os.urandom(32))
        self.netuid = int(meta["netuid"])
        self.block_seconds = float(meta["block_seconds"])
        self.lockstep_s = float(meta["lockstep_s"])  # 0: not a lock-step chain
        self.max_validators = int(meta["max_validators"])
        self._genesis_time = float(meta["genesis_time"])
        self._seed = bytes.fromhex(meta["seed"])
        if block_seconds is not None and block_seconds != self.block_seconds:
            raise ConfigError(
                f"local chain {self.path} runs with block_seconds={self.block_seconds:g}, not {block_seconds:g}. "
                "Drop the block_seconds option to use the chain as it is, or init a new chain file."
            )
        if lockstep_s is not None and lockstep_s != self.lockstep_s:
            raise ConfigError(
                f"local chain {self.path} runs with lockstep_s={self.lockstep_s:g}, not {lockstep_s:g}. "
                "Drop the lockstep_s option to use the chain as it is, or init a new chain file."
            )

    def __repr__(self) -> str:
        clock = f"lockstep_s={self.lockstep_s:g}" if self.lockstep_s else f"block_seconds={self.block_seconds:g}"
        return f"LocalChain({str(self.path)!r}, {clock}, netuid={self.netuid})"

    # --- the Chain protocol -------------------------------------------------------------------

    def block(self) -> int:
        with self._read() as db:
            return self._head(db)

    def block_hash(self, block: int) -> str:
        head = self.block()
        if block < 0 or block > head:
            raise ChainError(
                f"block {block} has no hash yet: local chain {self.path} is at block {head}. "
                "Wait for the block (protocol.wait_for_block) before reading its hash."
            )
        return "0x" + self._hash(block).hex()

    def metagraph(self) -> Metagraph:
        with self._read() as db:
            return self._metagraph(db)

    def commit(self, keypair: Keypair, data: bytes) -> int:
        hotkey = keypair.ss58_address
        data = check_commitment(hotkey, data)
        with self._write() as db:
            self._require_registered(db, hotkey)
            block = self._head(db) + 1
            db.execute("INSERT OR REPLACE INTO commitments (hotkey, block, data) VALUES (?, ?, ?)",
                       (hotkey, block, data))
        log.debug("commitment from %s: %d bytes in block %d", hotkey, len(data), block)
        return block

    def commitment(self, hotkey: str, *, at_block: int | None = None) -> Commitment | None:
        with self._read() as db:
            row = db.execute(
                "SELECT block, data FROM commitments WHERE hotkey = ? AND block <= ? ORDER BY block DESC LIMIT 1",
                (hotkey, self._limit(db, at_block)),
            ).fetchone()
        return Commitment(hotkey, row[0], bytes(row[1])) if row else None

    def commitments(self, *, at_block: int | None = None) -> dict[str, Commitment]:
        with self._read() as db:
            rows = db.execute(
                "SELECT c.hotkey, c.block, c.data FROM commitments c JOIN "
                "(SELECT hotkey, MAX(block) AS last FROM commitments WHERE block <= ? GROUP BY hotkey) m "
                "ON c.hotkey = m.hotkey AND c.block = m.last ORDER BY c.hotkey",
                (self._limit(db, at_block),),
            ).fetchall()
        return {hotkey: Commitment(hotkey, block, bytes(data)) for hotkey, block, data in rows}

    def set_weights(self, keypair: Keypair, weights: dict[int, float]) -> None:
        hotkey = keypair.ss58_address
        vector = normalise_weights(weights, hotkey)
        with self._write() as db:
            graph = self._metagraph(db)
            neuron = require_permit(graph, hotkey)
            require_uids(graph, vector, hotkey)
            block = graph.block + 1
            db.execute("INSERT OR REPLACE INTO weights (uid, block, vector) VALUES (?, ?, ?)",
                       (neuron.uid, block, json.dumps(vector)))
        log.debug("weights from uid %d over %d uids in block %d", neuron.uid, len(vector), block)

    def idle(self, hotkey: str, until: int | None) -> int:
        """HOTKEY has nothing to do before block UNTIL (None: ever again); on a lock-step chain, once every neuron
        is idle the head moves to the earliest UNTIL. → the head (other clocks only record it)."""
        with self._write() as db:
            self._require_registered(db, hotkey)
            head = self._settle(db)
            db.execute("INSERT OR REPLACE INTO idle (hotkey, until) VALUES (?, ?)", (hotkey, until))
            if not self.lockstep_s:
                return head
            rows = db.execute("SELECT n.hotkey, i.hotkey IS NOT NULL, i.until FROM neurons n "
                              "LEFT JOIN idle i ON i.hotkey = n.hotkey").fetchall()
            if any(not known or (wake is not None and wake <= head) for _, known, wake in rows):
                return head  # someone still has work at this block
            wakes = [wake for _, _, wake in rows if wake is not None]
            if wakes and min(wakes) > head:
                head = min(wakes)
                self._set_head(db, head)
                log.debug("lock-step: every neuron idle, head → %d", head)
            return head

    def weights(self) -> dict[int, dict[int, float]]:
        with self._read() as db:
            rows = db.execute(
                "SELECT w.uid, w.vector FROM weights w JOIN "
                "(SELECT uid, MAX(block) AS last FROM weights GROUP BY uid) m ON w.uid = m.uid AND w.block = m.last "
                "ORDER BY w.uid"
            ).fetchall()
        return {uid: {int(k): float(v) for k, v in json.loads(vector).items()} for uid, vector in rows}

    # --- admin: the CLI and tests, not part of the Protocol ----------------------------------

    def register(self, hotkey_ss58: str, coldkey_ss58: str | None = None) -> int:
        """The uid of HOTKEY_SS58, registering it (owned by COLDKEY_SS58, default itself) if new."""
        check_ss58(hotkey_ss58)
        coldkey = check_ss58(coldkey_ss58) if coldkey_ss58 else hotkey_ss58
        with self._write() as db:
            row = db.execute("SELECT uid, coldkey FROM neurons WHERE hotkey = ?", (hotkey_ss58,)).fetchone()
            if row is not None:
                if coldkey_ss58 and row[1] != coldkey_ss58:
                    raise ChainError(
                        f"hotkey {hotkey_ss58} is already registered as uid {row[0]} under coldkey {row[1]}, "
                        f"not {coldkey_ss58}. Use another hotkey for this coldkey."
                    )
                return int(row[0])
            uid = db.execute("SELECT COALESCE(MAX(uid) + 1, 0) FROM neurons").fetchone()[0]
            db.execute("INSERT INTO neurons (uid, hotkey, coldkey, stake, registered_block) VALUES (?, ?, ?, 0, ?)",
                       (uid, hotkey_ss58, coldkey, self._head(db)))
        log.debug("registered %s as uid %d on netuid %d", hotkey_ss58, uid, self.netuid)
        return int(uid)

    def add_stake(self, hotkey: str, amount: float) -> float:
        """Add AMOUNT (> 0) to HOTKEY's stake; returns its new stake."""
        if not math.isfinite(amount) or amount <= 0:
            raise ChainError(f"stake amount {amount} for {hotkey}: expected a finite number > 0.")
        with self._write() as db:
            self._require_registered(db, hotkey)
            db.execute("UPDATE neurons SET stake = stake + ? WHERE hotkey = ?", (amount, hotkey))
            stake = db.execute("SELECT stake FROM neurons WHERE hotkey = ?", (hotkey,)).fetchone()[0]
        log.debug("stake of %s is now %g", hotkey, stake)
        return float(stake)

    def step(self, n_blocks: int = 1) -> int:
        """Advance the head by N_BLOCKS (≥ 1), on either clock; returns the new head."""
        if n_blocks < 1:
            raise ChainError(f"step {n_blocks}: expected a number of blocks ≥ 1.")
        with self._write() as db:
            head = self._settle(db) + n_blocks
            self._set_head(db, head)
            return head

    # --- internals ---------------------------------------------------------------------------

    def _head(self, db: sqlite3.Connection) -> int:
        steps = int(db.execute("SELECT value FROM meta WHERE key = 'steps'").fetchone()[0])
        if self.lockstep_s:  # plus one block per lockstep_s seconds without an advance (a busy or dead neuron)
            since = float(db.execute("SELECT value FROM meta WHERE key = 'last_advance'").fetchone()[0])
            return steps + max(0, math.floor((self._clock() - since) / self.lockstep_s))
        if self.block_seconds <= 0:
            return steps
        return steps + max(0, math.floor((self._clock() - self._genesis_time) / self.block_seconds))

    def _settle(self, db: sqlite3.Connection) -> int:
        """The head, with a lock-step chain's ceiling blocks made permanent (inside a write)."""
        head = self._head(db)
        if self.lockstep_s and head != int(db.execute("SELECT value FROM meta WHERE key = 'steps'").fetchone()[0]):
            self._set_head(db, head)
        return head

    def _set_head(self, db: sqlite3.Connection, head: int) -> None:
        """Move the head to HEAD (from inside a write), restarting a lock-step chain's ceiling."""
        if self.lockstep_s or self.block_seconds <= 0:
            db.execute("UPDATE meta SET value = ? WHERE key = 'steps'", (str(head),))
            db.execute("UPDATE meta SET value = ? WHERE key = 'last_advance'", (repr(self._clock()),))
        else:  # a wall clock keeps counting from genesis; steps are what was added to it
            db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'steps'", (head - self._head(db),))

    def _limit(self, db: sqlite3.Connection, at_block: int | None) -> int:
        if at_block is None:
            return _NO_BLOCK_LIMIT
        head = self._head(db)
        if at_block > head:
            raise ChainError(
                f"cannot read state as of block {at_block}: local chain {self.path} is at block {head}. "
                "Wait for the block first (protocol.wait_for_block)."
            )
        return at_block

    def _metagraph(self, db: sqlite3.Connection) -> Metagraph:
        rows = db.execute("SELECT uid, hotkey, coldkey, stake FROM neurons ORDER BY uid").fetchall()
        ranked = sorted((r for r in rows if r[3] > 0), key=lambda r: (-r[3], r[0]))
        permitted = {r[0] for r in ranked[: self.max_validators]}
        neurons = tuple(Neuron(uid, hotkey, coldkey, float(stake), uid in permitted)
                        for uid, hotkey, coldkey, stake in rows)
        return Metagraph(self.netuid, self._head(db), neurons)

    def _require_registered(self, db: sqlite3.Connection, hotkey: str) -> None:
        if db.execute("SELECT 1 FROM neurons WHERE hotkey = ?", (hotkey,)).fetchone() is None:
            raise ChainError(not_registered(hotkey, self.netuid))

    def _hash(self, block: int) -> bytes:
        with self._hashes_lock:
            if not self._hashes:
                self._hashes.append(hashlib.sha256(b"moeforge-genesis" + self._seed).digest())
            while len(self._hashes) <= block:
                number = len(self._hashes)
                self._hashes.append(hashlib.sha256(self._hashes[-1] + number.to_bytes(8, "little") + self._seed).digest())
            return self._hashes[block]

    def _open_or_create(self, block_seconds: float | None, netuid: int, max_validators: int,
                        lockstep_s: float | None, seed: bytes) -> dict[str, str]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the folder for local chain {self.path}: {exc}") from exc
        defaults = {
            "schema_version": str(SCHEMA_VERSION),
            "netuid": str(netuid),
            "block_seconds": repr(DEFAULT_BLOCK_SECONDS if block_seconds is None else float(block_seconds)),
            "max_validators": str(max_validators),
            "genesis_time": repr(self._clock()),
            "seed": seed.hex(),
            "steps": "0",
            "lockstep_s": repr(float(lockstep_s or 0.0)),
            "last_advance": repr(self._clock()),
        }
        with self._connect() as db:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")  # persistent: set once, when the file is new
        with self._write() as db:
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    db.execute(statement)
            db.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", defaults.items())
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self._create = False
        if int(meta["schema_version"]) != SCHEMA_VERSION:
            raise ConfigError(f"local chain {self.path} has schema version {meta['schema_version']}; this moeforge "
                              f"reads version {SCHEMA_VERSION}. Init a new chain file.")
        return meta

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        target = self.path if self._create else self.path.absolute().as_uri() + "?mode=rw"
        try:
            db = sqlite3.connect(target, timeout=self._busy_timeout_s, isolation_level=None, uri=not self._create)
        except sqlite3.Error as exc:
            raise self._error(exc, "cannot open local chain") from exc
        try:
            db.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
            yield db
        except sqlite3.Error as exc:
            raise self._error(exc, "local chain") from exc
        finally:
            db.close()

    def _error(self, exc: sqlite3.Error, what: str) -> ChainError:
        """EXC as ChainUnavailable if the file cannot be reached right now, else ChainError; both say what to check."""
        name = getattr(exc, "sqlite_errorname", "") or ""
        text = str(exc)
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
            return ChainUnavailable(f"{what} {self.path}: {text}. Another process held the write lock for over "
                                    f"{self._busy_timeout_s:g} s; look for a stuck one.")
        if name.startswith(_UNREACHABLE) or text in ("unable to open database file", "disk I/O error"):
            return ChainUnavailable(f"{what} {self.path}: {text} ({_state_of(self.path)}). Check that the file and "
                                    "its folder are there and readable, and that the disk or mount holding them is up.")
        return ChainError(f"{what} {self.path}: {text}. Check the path and that it is a moeforge chain file "
                          "(`moeforge chain init` creates one).")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One consistent snapshot for several SELECTs."""
        with self._connect() as db:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """Take the write lock up front, so a read-then-write never races another writer."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


def _state_of(path: Path) -> str:
    """What is at PATH right now, in a few words, for an error message."""
    try:
        if path.is_file():
            return "the file is there"
        if path.exists():
            return "the path is not a file"
        return "the file is missing" if path.parent.is_dir() else f"its folder {path.parent} is missing"
    except OSError as exc:
        return f"cannot look: {exc.strerror or exc}"
