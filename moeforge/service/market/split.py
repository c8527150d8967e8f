"""Splitting an entry's revenue among the people who made it, through its lineage, exact to the micro.

The rule (integer micros throughout; every step hands out exactly what it was given):

1. The platform keeps FEE_BPS of the revenue, rounded down; the rest is the entry's.
2. An entry with parents (entries it was warm-started or merged from) passes UPSTREAM_BPS of what
   it gets, rounded down, to them in proportion to the slots each gave it, and each parent treats
   what it gets the same way: the share decays by UPSTREAM_BPS per generation, so a miner whose
   experts seeded later jobs keeps earning from them (Civitai pays 25% of spend to the creators of
   the resources used). Past MAX_DEPTH generations nothing flows further up.
3. What an entry keeps goes OWNER_BPS to its owner (the tenant whose job made it, or the subnet
   owner) and the rest to its contributors by their shares (contributors with the role "owner" are
   the owner). An entry without contributors gives all of it to its owner.

Every division is the largest-remainder method: each payee gets the floor of its exact share
(fractions, not floats), and the micros left over go one each to the largest remainders, ties to
the account that sorts first. So the split is deterministic and sums to the amount exactly.
"""

from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from moeforge.errors import DataError

FEE_BPS = 1_000  # 10% to the platform
UPSTREAM_BPS = 2_500  # 25% of what an entry gets flows to its parents
OWNER_BPS = 2_000  # 20% of what an entry keeps goes to its owner, 80% to its contributors
MAX_DEPTH = 32
FEE_ACCOUNT = "fee:platform"


@dataclass(frozen=True)
class Node:
    """What the split needs to know of one entry."""

    owner: str  # the owner's account, "tenant:<id>"
    contributors: tuple[tuple[str, Fraction], ...] = ()  # (account, share)
    parents: tuple[tuple[str, int], ...] = ()  # (parent entry, slots it gave)


@dataclass(frozen=True)
class Posting:
    account: str
    micros: int
    entry: str | None  # whose share this is (None: the platform's fee)


def apportion(amount: int, weights: dict[str, Fraction]) -> dict[str, int]:
    """`amount` split in proportion to `weights` (positive), by the largest remainder; sums to `amount` exactly."""
    total = sum(weights.values())
    if amount < 0 or not weights or total <= 0:
        raise ValueError(f"cannot apportion {amount} over weights {weights}")
    exact = {key: amount * w / total for key, w in weights.items()}
    shares = {key: int(value) for key, value in exact.items()}  # floor: the values are non-negative
    left = amount - sum(shares.values())
    for key in sorted(exact, key=lambda k: (-(exact[k] - shares[k]), k))[:left]:
        shares[key] += 1
    return shares


def split_revenue(entry: str, micros: int, node: Callable[[str], Node]) -> list[Posting]:
    """The postings (fee, then payees by entry) that share `micros` of `entry`'s revenue; they sum to `micros`."""
    fee = micros * FEE_BPS // 10_000
    credited: dict[tuple[str, str], int] = defaultdict(int)
    _credit(entry, micros - fee, node, (entry,), credited)
    postings = [Posting(FEE_ACCOUNT, fee, None)] if fee else []
    postings += [Posting(account, amount, owner_entry) for (owner_entry, account), amount in sorted(credited.items()) if amount]
    return postings


def _credit(entry: str, micros: int, node: Callable[[str], Node], path: tuple[str, ...], out: dict) -> None:
    if micros == 0:
        return
    this = node(entry)
    parents: dict[str, int] = defaultdict(int)
    for parent, slots in this.parents:
        parents[parent] += slots
    up = micros * UPSTREAM_BPS // 10_000 if parents and len(path) <= MAX_DEPTH else 0
    if up:
        for parent, amount in apportion(up, {p: Fraction(max(s, 1)) for p, s in parents.items()}).items():
            if parent in path:
                raise DataError(f"cyclic lineage: {' → '.join(e[:12] for e in (*path, parent))}")
            _credit(parent, amount, node, (*path, parent), out)
    weights: dict[str, Fraction] = defaultdict(Fraction)
    people = sum(share for _, share in this.contributors)
    if people > 0:
        weights[this.owner] += Fraction(OWNER_BPS, 10_000)
        for account, share in this.contributors:
            weights[account] += Fraction(10_000 - OWNER_BPS, 10_000) * share / people
    else:
        weights[this.owner] = Fraction(1)
    for account, amount in apportion(micros - up, {a: w for a, w in weights.items() if w > 0}).items():
        out[(entry, account)] += amount
