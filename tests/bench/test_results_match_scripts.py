"""Each benchmark's --quick run writes a JSON with the same keys as its committed result, provenance included.

So a committed figure cannot drift from the script that claims to produce it: a key the script
writes but the committed file lacks (or the reverse) means the committed file came from another
version of the script, and must be regenerated with the command it records.
"""

import json

import pytest

from tests.bench.conftest import BENCH, load_bench

pytestmark = pytest.mark.slow

PROVENANCE = ("command", "git_commit", "git_dirty", "started_at", "wall_seconds", "machine")
OUT_FLAG = {"esft_pilot": "--results", "testbed": "--results"}
# files a quick run would otherwise write beside the committed results
SIDE_OUTPUTS = {"esft_pilot": {"--plot": "tradeoff.png"}}
TESTBED_FLAG = {"esft_pilot": "--out", "testbed": "--out",
                "compounding": "--testbed", "service": "--testbed", "marketplace": "--testbed",
                "miner_memory": "--testbed"}
SHARED_DATA = {"compounding": "CHAMP"}  # benches reading ../shared/data (CI has it beside the clone; a clone elsewhere not)
BENCHES = sorted(p.stem for p in (BENCH / "results").glob("*.json"))
# benches whose own smoke test makes the quick run and checks its keys with `assert_committed_keys` (one run, not two)
OWN_SMOKE_TEST = {"attacks", "decentral_vs_central"}
# Results not yet regenerated since their scripts changed. Strict: a name listed here must fail.
# esft_pilot: the constrained section (early stopping within the drift budget, lr searched) is new; its full run
# (5 methods × a line search at 300,000 tokens each) has not been made yet.
# decentral_vs_central: the constrained comparison's sweep (bench/decentral_vs_central.py --sweep) ran 14 of its trials
# (README) but not to its end, so the committed file is still the unconstrained one of the previous script.
NOT_REGENERATED: set[str] = {"esft_pilot", "decentral_vs_central"}


def _cases():
    for name in sorted(set(BENCHES) - OWN_SMOKE_TEST):
        marks = [pytest.mark.xfail(strict=True, reason="the script writes keys its committed result lacks; regenerate")] \
            if name in NOT_REGENERATED else []
        yield pytest.param(name, marks=marks)


@pytest.mark.parametrize("name", BENCHES)
def test_every_committed_result_has_a_script_and_its_provenance(name):
    assert (BENCH / f"{name}.py").is_file(), f"bench/results/{name}.json has no bench/{name}.py"
    committed = json.loads((BENCH / "results" / f"{name}.json").read_text())
    missing = [k for k in PROVENANCE if k not in committed]
    assert not missing, f"bench/results/{name}.json lacks {missing}: regenerate it with its bench's command"
    assert committed["command"].startswith(f".venv/bin/python bench/{name}.py"), committed["command"]


@pytest.mark.parametrize("name", list(_cases()))
def test_quick_run_writes_the_committed_keys(name, tmp_path, small_testbed):
    out = tmp_path / f"{name}.json"
    argv = ["--quick", OUT_FLAG.get(name, "--out"), str(out)]
    for flag, filename in SIDE_OUTPUTS.get(name, {}).items():
        argv += [flag, str(tmp_path / filename)]
    if name in TESTBED_FLAG:
        argv += [TESTBED_FLAG[name], str(small_testbed[1])]
    bench = load_bench(name)
    if name in SHARED_DATA and not getattr(bench, SHARED_DATA[name]).is_file():
        pytest.skip("the shared data folder is not on this machine")
    bench.main(argv)
    assert_committed_keys(name, out, argv)


def assert_committed_keys(name: str, out, argv: list[str]) -> None:
    """The quick run of bench/NAME.py with `argv` wrote `out` with the committed result's top-level keys."""
    written = json.loads(out.read_text())
    committed = json.loads((BENCH / "results" / f"{name}.json").read_text())
    assert written["command"].endswith(" ".join(argv)) and isinstance(written["git_dirty"], bool)
    top_written, top_committed = set(written), set(committed)
    assert top_written == top_committed, (f"bench/{name}.py writes {sorted(top_written - top_committed)} that the committed "
                                          f"file lacks, and the committed file has {sorted(top_committed - top_written)} "
                                          "that the script no longer writes")
