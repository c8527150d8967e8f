import json

import pytest
from pydantic import ValidationError

from moeforge.data.records import Record
from moeforge.errors import ArtifactNotFound, DataError
from moeforge.eval.domain import domain_loss
from moeforge.eval.evaluate import evaluate
from moeforge.eval.general import general_perplexity
from moeforge.eval.report import EvalConfig, read_report, write_report
from tests.eval.memorised import TAUGHT, memorised_model

TAUGHT_ANSWERS = [Record(r.prompt, r.response.split("\nQuestion:")[0], r.source) for r in TAUGHT]


def test_report_holds_the_three_measures_and_reads_back(tmp_path):
    model, tokenizer = memorised_model()
    config = EvalConfig(seq_len=32, max_tokens=64, batch_size=2, gsm8k_limit=2, max_new_tokens=48)
    report = evaluate(model, tokenizer, TAUGHT_ANSWERS, config, data="taught", model_source="mem", model_fingerprint="ab")
    domain = domain_loss(model, tokenizer, TAUGHT_ANSWERS, seq_len=32, max_tokens=64)
    general = general_perplexity(model, tokenizer, seq_len=32, max_tokens=64)
    assert (report.domain_loss, report.domain_tokens) == (domain.loss, domain.tokens)
    assert (report.general_loss, report.general_ppl, report.general_tokens) == (general.loss, general.perplexity, general.tokens)
    assert (report.gsm8k.correct, report.gsm8k.total, report.gsm8k.accuracy) == (2, 2, 1.0)
    assert report.records == 3 and report.config == config and report.model_fingerprint == "ab"

    write_report(report, tmp_path / "deep" / "report.json")
    assert read_report(tmp_path / "deep" / "report.json") == report
    assert json.loads((tmp_path / "deep" / "report.json").read_text())["version"] == 1


def test_gsm8k_is_skipped_at_limit_zero():
    model, tokenizer = memorised_model()
    report = evaluate(model, tokenizer, TAUGHT_ANSWERS, EvalConfig(seq_len=32, max_tokens=64), data="taught")
    assert report.gsm8k is None and report.model is None


def test_config_reports_every_problem_at_once():
    with pytest.raises(ValidationError) as info:
        EvalConfig(seq_len=1, batch_size=0, gsm8k_limit=-1, extra=3)
    assert {e["loc"][0] for e in info.value.errors()} == {"seq_len", "batch_size", "gsm8k_limit", "extra"}
    with pytest.raises(ValidationError, match="max_tokens=100 is below seq_len=256"):
        EvalConfig(max_tokens=100)


def test_reading_a_missing_or_malformed_report_names_the_file(tmp_path):
    with pytest.raises(ArtifactNotFound, match="absent.json"):
        read_report(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "data": "math"}))
    with pytest.raises(DataError, match=r"bad.json: not a valid evaluation report \(.*domain_loss"):
        read_report(bad)
