"""The benchmarks' one tuning rule: a greedy line search along one knob that extends itself until its best is interior.

README "Benchmarks": a baseline is tuned as carefully as our method, on validation data, and a
search that ends at the edge of its grid is extended, so the search has no fixed grid at all.
"""

MAX_MOVES = 8  # steps in one direction: a bound on a runaway, not a grid edge


def line_search(trial, start, up, down, *, key: str = "loss", value: str = "value", max_moves: int = MAX_MOVES) -> dict:
    """Start, then step `up` while it helps, else `down` likewise; the best trial.

    `trial(x)` runs (or recalls) one trial and returns a dict with `key` (lower is better) and `value` (x);
    `up`/`down` map a value to its neighbour, or None where the knob has no further one.
    """
    best = trial(start)
    for step in (up, down):
        moved = False
        for _ in range(max_moves):
            nxt = step(best[value])
            if nxt is None:
                break
            got = trial(nxt)
            if got[key] >= best[key]:
                break
            best, moved = got, True
        if moved:
            break
    return best


def doubling(x: float) -> float:
    return x * 2.0


def halving(x: float) -> float:
    return x / 2.0
