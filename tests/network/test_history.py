import pytest

from moeforge.network.checks import Reject, Verdict
from moeforge.network.history import RoundEntry, RoundReport, VerdictEntry, contribution_shares, round_entry

BASE, NEW = "a" * 64, "b" * 64


def _report(choice="merged", state=NEW, merge_base=5.0, merged=4.5, single=None, contributions=None, verdicts=()):
    return RoundReport(job_id="j", round=0, validator="v", seed_block=1, seed="0x01", base_sha256=BASE, state_sha256=state,
                       state_digest="c" * 64, choice=choice, contributions=contributions or {}, verdicts=list(verdicts),
                       score_rows=1, merge_rows=1, merge_base_loss=merge_base, merged_loss=merged, single_loss=single)


def test_the_gain_of_a_round_is_the_merge_sample_improvement_of_the_state_it_adopted():
    assert _report().gain == pytest.approx(0.5) and _report().adopted_loss == 4.5
    assert _report(choice="single", merged=5.2, single=4.8).gain == pytest.approx(0.2)
    assert _report(choice="none", state=BASE, merged=5.2).gain == 0.0


def test_shares_weight_each_adopted_round_by_its_gain_and_sum_to_one():
    entries = [
        RoundEntry(round=0, outcome="adopted", base_sha256=BASE, state_sha256=NEW, contributions={"m1": 0.5, "m2": 0.5}, gain=0.3),
        RoundEntry(round=1, outcome="adopted", base_sha256=NEW, state_sha256=BASE, contributions={"m1": 1.0}, gain=0.1),
        RoundEntry(round=2, outcome="kept", base_sha256=BASE, state_sha256=BASE, contributions={"m3": 1.0}, gain=0.0),
        RoundEntry(round=3, outcome="no_result", base_sha256=BASE, state_sha256=BASE),
    ]
    shares = contribution_shares(entries)
    assert shares == pytest.approx({"m1": 0.25 / 0.4, "m2": 0.15 / 0.4}) and sum(shares.values()) == pytest.approx(1.0)
    assert contribution_shares(entries[2:]) == {}


def test_a_round_entry_keeps_scores_rejections_and_whether_the_state_changed():
    verdicts = [VerdictEntry.of(Verdict("m1", None, "ok", 0.2, 4.8, 5.0), "d" * 64, 3),
                VerdictEntry.of(Verdict("m2", Reject.NON_FINITE, "x: 1 non-finite values (1 nan, 0 inf)"))]
    entry = round_entry(0, BASE, {"v": NEW}, {"v": 10.0}, _report(contributions={"m1": 1.0}, verdicts=verdicts), "e" * 64)
    assert entry.outcome == "adopted" and entry.scores == {"m1": 0.2, "m2": 0.0} and entry.report == "e" * 64
    assert entry.rejections["m2"].reason == "non_finite" and "nan" in entry.rejections["m2"].detail
    assert round_entry(0, BASE, {"v": BASE}, {"v": 10.0}, _report(choice="none", state=BASE), "e" * 64).outcome == "kept"
    assert round_entry(0, BASE, {}, {}, None, None).outcome == "no_result"
