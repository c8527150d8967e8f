"""Who sees which data: each miner's training shard, and the validators' seeded eval batches.

DESIGN.md "The network", steps 1 and 5. Both draws are sampling without replacement driven by a
sha256 counter-mode stream (`sha256(key ‖ counter)`, read as big-endian 64-bit words, made
unbiased by rejection), so they are the same in every process, on every platform and every
Python version: no `random`, no `hash()`, no torch generator whose algorithm may change.

- A miner's shard, and the part of the experts it trains (`miner_part`), are functions of
  (job id, round, hotkey) only: anyone can recompute which
  training rows a miner was assigned; different hotkeys get independent draws (two shards of
  `size` rows out of n overlap in about size²/n rows).
- The validators' held-out split never leaves them (`moeforge.data.splits.split_records` with
  their secret salt; miners draw only from the train split). The eval batches are drawn from
  it with the hash of `RoundSchedule.seed_block(r)`, a block that does not exist until reveals
  are closed, so no miner can know them in advance; two validators with the same held-out rows
  and the same block hash draw exactly the same batches.
- The shard evidence's control rows (`control_sample`) are train rows in none of the round's
  shards, drawn with the same block's hash: rows as likely as a miner's own to have been trained
  in earlier rounds, but by nobody in this one.
"""

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence, Sized

import torch

from moeforge.errors import ConfigError

log = logging.getLogger(__name__)

_SHARD_TAG = b"moeforge/shard/v1"
_EVAL_TAG = b"moeforge/eval/v1"
_PART_TAG = b"moeforge/part/v1"
_CONTROL_TAG = b"moeforge/control/v1"
_U64 = 2**64


def miner_shard(rows: Sized | int, job_id: str, round: int, hotkey: str, size: int) -> list[int]:
    """`size` distinct indices into `rows` (a sequence, or its length) for this miner this round, in draw order."""
    n = _length(rows)
    if round < 0:
        raise ConfigError(f"round numbers start at 0; got round {round}.")
    _check_size(size, n, what=f"miner shard for {hotkey} (job {job_id!r}, round {round})")
    key = _SHARD_TAG + _field(job_id.encode("utf-8")) + round.to_bytes(8, "big") + _field(hotkey.encode("utf-8"))
    return _sample(n, size, key)


def miner_part(parts: int, job_id: str, round: int, hotkey: str) -> int:
    """The part (0..parts-1) of the job's experts this miner trains this round: uniform, a function of (job, round, hotkey)."""
    if parts < 1 or round < 0:
        raise ConfigError(f"miner_part needs parts ≥ 1 and round ≥ 0; got parts {parts}, round {round}.")
    key = _PART_TAG + _field(job_id.encode("utf-8")) + round.to_bytes(8, "big") + _field(hotkey.encode("utf-8"))
    return _sample(parts, 1, key)[0]


def eval_sample(heldout_rows: Sized | int, seed: bytes | str, n: int) -> list[int]:
    """`n` distinct held-out row indices drawn from `seed` (the seed block's hash, bytes or hex)."""
    return eval_samples(heldout_rows, seed, n)[0]


def eval_samples(heldout_rows: Sized | int, seed: bytes | str, *sizes: int) -> tuple[list[int], ...]:
    """Disjoint draws of the given sizes from one seeded order, e.g. (scoring rows, merge-check rows).

    The first draw equals `eval_sample(heldout_rows, seed, sizes[0])`.
    """
    total = _length(heldout_rows)
    _check_size(sum(sizes), total, what="eval sample" + (f" ({' + '.join(map(str, sizes))} rows)" if len(sizes) > 1 else ""))
    if any(size < 0 for size in sizes):
        raise ConfigError(f"sample sizes must be non-negative; got {sizes}.")
    order = _sample(total, sum(sizes), _EVAL_TAG + _field(parse_seed(seed)))
    out, start = [], 0
    for size in sizes:
        out.append(order[start : start + size])
        start += size
    return tuple(out)


def control_sample(train_rows: Sized | int, seed: bytes | str, assigned: Iterable[int], n: int) -> list[int]:
    """Up to `n` distinct train row indices that are not in `assigned` (the rows of the round's shards), drawn from
    `seed` (the seed block's hash): the shard evidence's control rows, unknown to miners until reveals are closed."""
    if n < 0:
        raise ConfigError(f"a control sample's size must be non-negative; got {n}.")
    taken = set(assigned)
    free = [i for i in range(_length(train_rows)) if i not in taken]
    return [free[i] for i in _sample(len(free), min(n, len(free)), _CONTROL_TAG + _field(parse_seed(seed)))]


def parse_seed(seed: bytes | str) -> bytes:
    """A block hash as bytes: raw bytes, or hex with or without '0x'; ConfigError if empty or not hex."""
    if isinstance(seed, str):
        text = seed.removeprefix("0x").removeprefix("0X")
        try:
            seed = bytes.fromhex(text)
        except ValueError as exc:
            raise ConfigError(f"eval seed {text[:24]!r} is not hex; pass the seed block's hash as bytes or hex.") from exc
    if not seed:
        raise ConfigError("the eval seed is empty; pass the hash of the round's seed block (RoundSchedule.seed_block).")
    return bytes(seed)


def rows_to_batches(
    input_ids: torch.Tensor, labels: torch.Tensor, indices: Sequence[int], batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rows at `indices`, in that order, as (input_ids, labels) batches of up to batch_size rows."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1 (got {batch_size}).")
    index = torch.as_tensor(list(indices), dtype=torch.long)
    return [
        (input_ids[index[i : i + batch_size]], labels[index[i : i + batch_size]]) for i in range(0, len(index), batch_size)
    ]


def _sample(n: int, k: int, key: bytes) -> list[int]:
    """The first k positions of a Fisher–Yates shuffle of range(n) driven by the key's stream; O(k)."""
    words = _stream(key)
    moved: dict[int, int] = {}  # position → value, for the positions a swap has touched
    out = []
    for i in range(k):
        j = i + _below(n - i, words)
        vi, vj = moved.get(i, i), moved.get(j, j)
        moved[j] = vi
        out.append(vj)
    return out


def _stream(key: bytes) -> Iterator[int]:
    """64-bit words of sha256(key ‖ counter) for counter = 0, 1, … (8-byte big-endian)."""
    counter = 0
    while True:
        block = hashlib.sha256(key + counter.to_bytes(8, "big")).digest()
        for start in range(0, 32, 8):
            yield int.from_bytes(block[start : start + 8], "big")
        counter += 1


def _below(bound: int, words: Iterator[int]) -> int:
    """A uniform integer in [0, bound), rejecting the top words that would bias the modulo."""
    limit = _U64 - _U64 % bound
    while True:
        word = next(words)
        if word < limit:
            return word % bound


def _field(data: bytes) -> bytes:
    """Length-prefixed (4-byte big-endian), so no two different keys concatenate to the same bytes."""
    return len(data).to_bytes(4, "big") + data


def _length(rows: Sized | int) -> int:
    return rows if isinstance(rows, int) else len(rows)


def _check_size(size: int, n: int, *, what: str) -> None:
    if not 0 <= size <= n:
        raise ConfigError(
            f"{what}: asked for {size} rows but only {n} are available. "
            "Lower the shard or sample size, or give the job more data."
        )
