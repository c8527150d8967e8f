"""Entries end to end on the small testbed, on SQLite and PostgreSQL: deposit checks, content addressing, verify,
cards, matching, warm start and combine."""

import pytest
import torch

from moeforge.errors import ArtifactNotFound, DataError, ModelError
from moeforge.library.entry import Contributor, Parent
from moeforge.model.experts import ExpertSlot, ExpertWeights
from moeforge.model.slices import ExpertSlice, extract_slice
from tests.library.conftest import SEQ_LEN, deposit_trained
from tests.store.conftest import BUCKET, CREDENTIALS, s3_endpoint  # noqa: F401  (the moto S3 server fixture)

pytestmark = pytest.mark.slow


def _same(a: ExpertSlice, b: ExpertSlice) -> bool:
    return a.slots == b.slots and all(torch.equal(x, y) for s in a.slots
                                      for x, y in zip(a.weights[s].tensors().values(), b.weights[s].tensors().values()))


def test_a_deposited_entry_round_trips_bit_for_bit_and_the_same_content_twice_is_one_entry(library, base_model, trained):
    t = trained["math"]
    entry, new = deposit_trained(library, base_model, t)
    again, new_again = deposit_trained(library, base_model, t)
    assert (new, new_again) == (True, False) and again == entry
    assert len(library.catalog.entries()) == 1
    manifest = library.manifest(entry[:10])
    assert manifest.slots == tuple((s.layer, s.expert) for s in t.experts.slots)
    assert _same(library.experts(manifest, entry), t.experts)
    assert library.profile(manifest, entry) == t.profile
    other, _ = deposit_trained(library, base_model, t, license="MIT")  # different content: another entry
    assert other != entry


def test_a_deposit_for_another_base_or_with_other_shapes_is_refused_and_stores_nothing(library, base_model, trained):
    model, _ = base_model
    t = trained["math"]
    foreign = ExpertSlice("experts", t.experts.model_type, "f" * 64, t.experts.weights)
    with pytest.raises(ModelError, match="made on base model ffffffff"):
        deposit_trained(library, base_model, t.__class__(t.domain, foreign, t.profile, t.fingerprint))
    slot = t.experts.slots[0]
    w = t.experts.weights[slot]
    wrong = ExpertSlice("experts", t.experts.model_type, t.fingerprint,
                        {**t.experts.weights, slot: ExpertWeights(gate=w.gate[:-1], up=w.up, down=w.down)})
    with pytest.raises(ModelError, match="does not fit this model"):
        deposit_trained(library, base_model, t.__class__(t.domain, wrong, t.profile, t.fingerprint))
    missing = ExpertSlice("experts", t.experts.model_type, t.fingerprint, {ExpertSlot(0, 99): w})
    with pytest.raises(ModelError):
        deposit_trained(library, base_model, t.__class__(t.domain, missing, t.profile, t.fingerprint))
    assert library.catalog.entries() == [] and list(library.store.digests()) == []


def test_verify_reports_a_corrupt_or_missing_blob_and_such_an_entry_is_never_served(library, base_model, trained, tmp_path):
    math_entry, _ = deposit_trained(library, base_model, trained["math"])
    code_entry, _ = deposit_trained(library, base_model, trained["python"])
    assert library.verify() == (2, [])
    math_manifest = library.manifest(math_entry)
    blob = next(p for p in (tmp_path / "library-store").rglob(math_manifest.experts))
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    code_profile = next(p for p in (tmp_path / "library-store").rglob(library.manifest(code_entry).profile))
    code_profile.unlink()
    checked, problems = library.verify()
    assert checked == 2
    assert {p.entry for p in problems} == {math_entry, code_entry}
    assert any("corrupt" in p.what for p in problems) and any("missing" in p.what for p in problems)
    with pytest.raises(DataError, match="corrupt"):
        library.experts(math_manifest, math_entry)
    with pytest.raises(ArtifactNotFound, match="missing"):
        library.profile(library.manifest(code_entry), code_entry)


def test_the_card_follows_hugging_face_conventions_and_names_lineage_and_contributors(library, base_model, trained):
    from huggingface_hub import ModelCard

    from moeforge.library.card import model_card
    from moeforge.library.entry import Metrics

    parent, _ = deposit_trained(library, base_model, trained["math"])
    child, _ = deposit_trained(
        library, base_model, trained["medical"], metrics=Metrics(domain_loss_before=4.2, domain_loss_after=3.9, general_ppl_after=60.5),
        parents=(Parent(entry=parent, relation="warm_start", slots=1),),
        contributors=(Contributor(id="5GrwvaEF", role="miner", share=0.6), Contributor(id="5FHneW46", role="miner", share=0.4)))
    text = model_card(child, library.manifest(child))
    card = ModelCard(text)
    assert card.data.base_model == library.manifest(child).base_model
    assert card.data.base_model_relation == "finetune" and card.data.license == "apache-2.0"
    assert [r.metric_value for r in card.data.eval_results] == [3.9, 60.5]
    assert f"warm start from `{parent}`" in text and "| `5GrwvaEF` | miner | 0.6000 |" in text


def test_match_ranks_each_domains_own_entry_first_and_background_subtraction_separates_what_raw_cosine_does_not(
        library, base_model, trained):
    from moeforge.data.corpora import load_corpus
    from moeforge.library.match import chosen, match_records

    model, tokenizer = base_model
    entries = {d: deposit_trained(library, base_model, t)[0] for d, t in trained.items()}
    fingerprint = trained["math"].fingerprint
    for domain in ("math", "medical"):
        ranking = match_records(library, model, tokenizer, load_corpus(domain, "test"), fingerprint, seq_len=SEQ_LEN, tokens=8192)
        assert ranking[0].entry == entries[domain], [(c.domain, c.similarity, c.loss_gain) for c in ranking]
        assert ranking[0].loss_gain > 0
        assert chosen(ranking)[0].entry == entries[domain]
        own, others = ranking[0], ranking[1:]
        # raw cosines are all high; the log-ratios against the background leave a wide gap to the other domains
        assert min(c.raw_cosine for c in others) > 0.8
        assert own.similarity - max(c.similarity for c in others) > 2 * (own.raw_cosine - max(c.raw_cosine for c in others))
    library.catalog.retire(entries["math"], "test")
    ranking = match_records(library, model, tokenizer, load_corpus("math", "test"), fingerprint, seq_len=SEQ_LEN, tokens=8192)
    assert entries["math"] not in [c.entry for c in ranking]  # retired: never matched


def test_warm_start_takes_each_slot_from_the_first_entry_that_has_it_and_the_base_elsewhere(library, base_model, trained):
    from moeforge.library.warm import warm_start
    from moeforge.model.slices import apply_slice

    model, _ = base_model
    fingerprint = trained["math"].fingerprint
    math_entry, _ = deposit_trained(library, base_model, trained["math"])
    code_entry, _ = deposit_trained(library, base_model, trained["python"])
    math_slots, code_slots = set(trained["math"].experts.slots), set(trained["python"].experts.slots)
    untouched = ExpertSlot(1, next(e for e in range(8) if ExpertSlot(1, e) not in math_slots | code_slots))
    wanted = sorted(math_slots | code_slots | {untouched})
    before = extract_slice(model, wanted, fingerprint)
    try:
        sources = warm_start(model, library, [math_entry, code_entry], wanted, fingerprint)
        now = extract_slice(model, wanted, fingerprint)
    finally:
        apply_slice(model, before)
    assert [(s.entry, s.slots) for s in sources] == [(math_entry, len(math_slots)), (code_entry, len(code_slots - math_slots))]
    for slot in wanted:
        expected = (trained["math"].experts if slot in math_slots else trained["python"].experts if slot in code_slots else before)
        assert torch.equal(now.weights[slot].gate, expected.weights[slot].gate), slot


def test_combine_keeps_unique_slots_whole_and_averages_the_changes_of_shared_ones(library, base_model, trained):
    from moeforge.library.combine import combine_entries

    model, _ = base_model
    fingerprint = trained["math"].fingerprint
    a, _ = deposit_trained(library, base_model, trained["math"])
    b, _ = deposit_trained(library, base_model, trained["medical"])
    combined = combine_entries(library, model, fingerprint, [a, b])
    ea, eb = trained["math"].experts, trained["medical"].experts
    shared = set(ea.slots) & set(eb.slots)
    assert combined.experts.slots == sorted(set(ea.slots) | set(eb.slots))
    assert combined.merged_slots == len(shared) and combined.sources == {a: len(ea.slots), b: len(eb.slots)}
    base = extract_slice(model, combined.experts.slots, fingerprint)
    for slot in combined.experts.slots:
        got = combined.experts.weights[slot].gate.double()
        if slot in shared:
            want = base.weights[slot].gate.double() + ((ea.weights[slot].gate.double() - base.weights[slot].gate.double())
                                                       + (eb.weights[slot].gate.double() - base.weights[slot].gate.double())) / 2
            assert torch.allclose(got, want, atol=1e-6)
        else:
            src = ea if slot in ea.weights else eb
            assert torch.equal(combined.experts.weights[slot].gate, src.weights[slot].gate)


def test_tensors_that_do_not_match_their_manifest_are_refused(library, base_model, trained):
    from safetensors.torch import save

    from moeforge.library.entry import experts_slice

    entry, _ = deposit_trained(library, base_model, trained["math"])
    manifest = library.manifest(entry)
    state = trained["math"].experts.state_dict()
    first = sorted(state)[0]
    extra = {**state, "model.layers.1.mlp.experts.99.gate_proj.weight": state[first].clone()}
    with pytest.raises(DataError, match="unexpected key model.layers.1.mlp.experts.99"):
        experts_slice(manifest, save(extra), "crafted")
    reshaped = {**state, first: state[first][:-1]}
    with pytest.raises(DataError, match=f"{first} is float32"):
        experts_slice(manifest, save(reshaped), "crafted")
    with pytest.raises(DataError, match="not readable safetensors"):
        experts_slice(manifest, b"not a safetensors file", "crafted")


def test_a_library_whose_blobs_live_in_s3_deposits_serves_and_verifies(s3_endpoint, base_model, trained, tmp_path):
    from moeforge.library.open import open_library

    library = open_library(f"sqlite:///{tmp_path}/catalog.sqlite", f"s3://{BUCKET}/library?endpoint={s3_endpoint}",
                           credentials=CREDENTIALS)
    entry, new = deposit_trained(library, base_model, trained["python"])
    assert new and _same(library.experts(library.manifest(entry), entry), trained["python"].experts)
    assert library.verify() == (1, [])


def test_the_average_rule_gives_a_slot_two_entries_trained_the_mean_of_their_weights(library, base_model, trained):
    from moeforge.library.warm import warm_start
    from moeforge.model.slices import apply_slice

    model, _ = base_model
    fingerprint = trained["math"].fingerprint
    a, _ = deposit_trained(library, base_model, trained["math"])
    b, _ = deposit_trained(library, base_model, trained["medical"])
    ea, eb = trained["math"].experts, trained["medical"].experts
    shared = sorted(set(ea.slots) & set(eb.slots))
    assert shared, "the maths and medical selections share no slot on this testbed"
    wanted = sorted(set(ea.slots) | set(eb.slots))
    before = extract_slice(model, wanted, fingerprint)
    try:
        sources = warm_start(model, library, [a, b], wanted, fingerprint, rule="average")
        now = extract_slice(model, wanted, fingerprint)
    finally:
        apply_slice(model, before)
    assert [(s.entry, s.slots) for s in sources] == [(a, len(ea.slots)), (b, len(eb.slots))]
    slot = shared[0]
    mean = (ea.weights[slot].down.double() + eb.weights[slot].down.double()) / 2
    assert torch.allclose(now.weights[slot].down.double(), mean, atol=1e-6)


def test_a_deposit_whose_parent_is_missing_or_whose_lineage_has_a_cycle_is_refused_and_indexes_nothing(library, base_model, trained):
    from sqlalchemy.orm import Session

    from moeforge.library.schema import ParentRow

    t = trained["math"]
    ghost = "ab" * 32
    with pytest.raises(DataError, match="not in this library's catalog"):
        deposit_trained(library, base_model, t, parents=(Parent(entry=ghost, relation="warm_start", slots=1),))
    a, _ = deposit_trained(library, base_model, t)
    b, _ = deposit_trained(library, base_model, t, license="MIT", parents=(Parent(entry=a, relation="warm_start", slots=2),))
    with Session(library.catalog.engine) as s:  # a catalog written by other hands: a names b as its parent too
        s.add(ParentRow(entry_id=a, parent_id=b, relation="merge", slots=1))
        s.commit()
    before = len(library.catalog.entries())
    with pytest.raises(DataError, match="cyclic lineage refused at deposit"):
        deposit_trained(library, base_model, t, license="CC0-1.0", parents=(Parent(entry=b, relation="warm_start", slots=1),))
    assert len(library.catalog.entries()) == before
