"""split.py: revenue shared through random lineage trees hands out exactly what came in, close to the exact shares."""

import random
from fractions import Fraction

import pytest

from moeforge.errors import DataError
from moeforge.service.market.split import FEE_ACCOUNT, FEE_BPS, OWNER_BPS, UPSTREAM_BPS, Node, apportion, split_revenue


def random_tree(rng: random.Random, size: int) -> dict[str, Node]:
    """A random lineage DAG: entry i may name parents among entries 0..i-1; random owners, miners and shares."""
    nodes = {}
    owners = [f"tenant:t{k}" for k in range(3)]
    for i in range(size):
        parents = tuple((f"e{p}", rng.randint(0, 5)) for p in sorted(rng.sample(range(i), min(i, rng.choice((0, 1, 1, 2, 3))))))
        people = tuple((f"hotkey:m{rng.randrange(20)}", Fraction(repr(rng.random()))) for _ in range(rng.choice((0, 1, 2, 4))))
        nodes[f"e{i}"] = Node(owner=rng.choice(owners), contributors=people, parents=parents)
    return nodes


def exact_split(entry: str, amount: Fraction, nodes: dict[str, Node]) -> dict[str, Fraction]:
    """The same rule without rounding: a second code path for what each account is owed."""
    out: dict[str, Fraction] = {FEE_ACCOUNT: amount * FEE_BPS / 10_000}

    def credit(e: str, value: Fraction) -> None:
        node = nodes[e]
        parents: dict[str, int] = {}
        for p, s in node.parents:
            parents[p] = parents.get(p, 0) + s
        up = value * UPSTREAM_BPS / 10_000 if parents else Fraction(0)
        weights = {p: max(s, 1) for p, s in parents.items()}
        for p, w in weights.items():
            credit(p, up * w / sum(weights.values()))
        own = value - up
        people = sum(s for _, s in node.contributors)
        if people > 0:
            out[node.owner] = out.get(node.owner, 0) + own * OWNER_BPS / 10_000
            for account, share in node.contributors:
                out[account] = out.get(account, 0) + own * (10_000 - OWNER_BPS) / 10_000 * share / people
        else:
            out[node.owner] = out.get(node.owner, 0) + own

    credit(entry, amount - out[FEE_ACCOUNT])
    return out


def test_a_thousand_random_lineage_trees_reconcile_exactly_and_stay_within_rounding_of_the_exact_shares():
    rng = random.Random(1234)
    for tree in range(1000):
        nodes = random_tree(rng, rng.randint(1, 12))
        leaf = f"e{len(nodes) - 1}"
        amount = rng.choice((0, 1, 7, 999, rng.randint(1, 10**12)))
        postings = split_revenue(leaf, amount, nodes.__getitem__)
        assert sum(p.micros for p in postings) == amount, tree
        assert all(p.micros > 0 for p in postings), tree
        paid: dict[str, int] = {}
        for p in postings:
            paid[p.account] = paid.get(p.account, 0) + p.micros
        exact = exact_split(leaf, Fraction(amount), nodes)
        steps = 4 * len(nodes) * (len(nodes) + 2)  # each floor or largest-remainder step moves an account by under 1 micro
        for account, owed in exact.items():
            assert abs(paid.get(account, 0) - owed) <= steps, (tree, account, paid.get(account, 0), float(owed))


def test_the_split_is_deterministic_and_an_upstream_parent_earns_from_its_child():
    nodes = {"parent": Node(owner="tenant:a", contributors=(("hotkey:old", Fraction(1)),)),
             "child": Node(owner="tenant:b", contributors=(("hotkey:new", Fraction(1)),), parents=(("parent", 3),))}
    first = split_revenue("child", 1_000_000, nodes.__getitem__)
    assert first == split_revenue("child", 1_000_000, nodes.__getitem__)
    paid = {p.account: p.micros for p in first}
    assert paid[FEE_ACCOUNT] == 100_000
    assert paid["hotkey:old"] > 0 and paid["tenant:a"] > 0  # the parent's miner and owner keep earning
    assert paid["hotkey:new"] > paid["hotkey:old"]


def test_largest_remainder_gives_leftover_micros_to_the_largest_remainders_then_the_first_account():
    assert apportion(10, {"a": Fraction(1), "b": Fraction(1), "c": Fraction(1)}) == {"a": 4, "b": 3, "c": 3}
    assert apportion(2, {"x": Fraction(1), "y": Fraction(3)}) == {"x": 1, "y": 1}  # 0.5 / 1.5: remainders tie at .5
    assert sum(apportion(10**12 + 7, {str(i): Fraction(i + 1) for i in range(13)}).values()) == 10**12 + 7


def test_a_cycle_in_the_lineage_is_refused_not_followed_forever():
    nodes = {"a": Node(owner="tenant:x", parents=(("b", 1),)), "b": Node(owner="tenant:x", parents=(("a", 1),))}
    with pytest.raises(DataError, match="cyclic lineage"):
        split_revenue("a", 10**9, nodes.__getitem__)
