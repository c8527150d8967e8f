import math

import pytest
import torch

from moeforge.data.packing import Packed
from moeforge.errors import ModelError
from moeforge.model.experts import ExpertSlot, ExpertWeights
from moeforge.model.loss import mean_token_loss
from moeforge.model.routing import RoutingRecorder
from moeforge.model.slices import ExpertSlice, extract_slice, linear_combination
from moeforge.network.checks import Reject
from moeforge.network.scoring import applied, batch_losses, score_deltas, scoring_cost
from moeforge.network.shards import rows_to_batches
from moeforge.train.config import TrainConfig
from moeforge.train.esft import train_experts
from moeforge.train.loop import train
from tests.model.tiny import tiny_model

SLOTS = [ExpertSlot(layer, e) for layer in (1, 2) for e in range(8)]
ROWS = 4  # rows per eval batch


def _pattern_rows(seed: int, rows: int = 16, seq_len: int = 24) -> torch.Tensor:
    """A learnable toy domain: arithmetic progressions (step 7, mod 90) from random starts."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 96, (rows, 1), generator=g) + 7 * torch.arange(seq_len)).remainder(90) + 3


def _pretrained():
    """The tiny model after a short full pre-training on progressions of every step: a base with real structure."""
    model = tiny_model("deepseek_v2")
    g = torch.Generator().manual_seed(5)
    ids = (torch.randint(0, 96, (64, 1), generator=g) + torch.randint(1, 12, (64, 1), generator=g) * torch.arange(24)).remainder(90) + 3
    packed = Packed(input_ids=ids, labels=ids.clone(), n_tokens=ids.numel(), n_loss_tokens=ids.numel())
    train(model, list(model.parameters()), packed, TrainConfig(lr=1e-2, steps=40, batch_size=8, warmup_steps=2, weight_decay=0.0))
    return model


def _train(model, ids: torch.Tensor, steps: int = 8, seed: int = 0) -> ExpertSlice:
    packed = Packed(input_ids=ids, labels=ids.clone(), n_tokens=ids.numel(), n_loss_tokens=ids.numel())
    cfg = TrainConfig(lr=1e-2, steps=steps, batch_size=4, warmup_steps=1, weight_decay=0.0, seed=seed)
    delta, _ = train_experts(model, SLOTS, packed, cfg, base_fingerprint="fp")
    return delta


def _batches(ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return rows_to_batches(ids, ids.clone(), range(len(ids)), ROWS)


def _noise_delta(current: ExpertSlice, scale: float, seed: int = 0) -> ExpertSlice:
    g = torch.Generator().manual_seed(seed)
    weights = {
        slot: ExpertWeights(**{k: scale * t.double().std() * torch.randn(t.shape, generator=g, dtype=torch.float64)
                               for k, t in vars(w).items() if t is not None})
        for slot, w in current.weights.items()
    }
    return ExpertSlice("delta", current.model_type, current.base_fingerprint, weights)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _bit_identical(model, snapshot) -> bool:
    state = model.state_dict()
    return state.keys() == snapshot.keys() and all(
        torch.equal(state[k].view(torch.uint8), snapshot[k].view(torch.uint8)) for k in snapshot
    )


def _reference_loss(model, delta: ExpertSlice | None, batches) -> float:
    """Second path: the delta added by hand to a copy of the model's fused expert tensors, loaded strictly into a fresh model."""
    fresh = tiny_model("deepseek_v2", seed=7)
    state = _snapshot(model)
    for slot, w in (delta.weights.items() if delta else []):
        gate_up = state[f"model.layers.{slot.layer}.mlp.experts.gate_up_proj"]  # [E, 2I, H], gate rows first
        down = state[f"model.layers.{slot.layer}.mlp.experts.down_proj"]  # [E, H, I]
        inter = down.shape[-1]
        gate_up[slot.expert, :inter] = (gate_up[slot.expert, :inter].double() + w.gate).float()
        gate_up[slot.expert, inter:] = (gate_up[slot.expert, inter:].double() + w.up).float()
        down[slot.expert] = (down[slot.expert].double() + w.down).float()
    fresh.load_state_dict(state, strict=True)
    ids, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    return mean_token_loss(fresh, ids, labels, batch_size=ROWS)


@pytest.fixture(scope="module")
def setup():
    model = _pretrained()
    current = extract_slice(model, SLOTS, "fp")
    honest = _train(model, _pattern_rows(seed=1))
    return model, current, honest


def test_honest_delta_scores_above_zero_noise_does_not_and_the_model_is_left_bit_identical(setup):
    model, current, honest = setup
    before = _snapshot(model)
    batches = _batches(_pattern_rows(seed=99))  # held out: rows the miner never trained on
    deltas = {"5Honest": honest, "5Noise": _noise_delta(current, 2.0), "5Faint": _noise_delta(current, 0.1, seed=1)}
    verdicts = score_deltas(model, current, deltas, batches, significance=0.05)
    assert _bit_identical(model, before)
    good, noise, faint = verdicts["5Honest"], verdicts["5Noise"], verdicts["5Faint"]
    assert good.accepted and good.score > 1e-3 and good.score == pytest.approx(good.base_loss - good.loss, rel=1e-9)
    assert good.p_value < 0.05
    assert noise.reject == Reject.NO_IMPROVEMENT and noise.score == 0.0 and noise.loss > noise.base_loss  # it hurts
    assert faint.reject == Reject.NO_IMPROVEMENT and faint.score == 0.0 and abs(faint.base_loss - faint.loss) <= 1e-3


def test_a_gain_counts_only_when_the_paired_test_finds_it_significant(setup):
    model, current, honest = setup
    batches = _batches(_pattern_rows(seed=99))
    mixed = linear_combination(current, [(0.3, honest), (1.0, _noise_delta(current, 0.3, seed=4))])  # some gain, much noise
    loose = score_deltas(model, current, {"5Mixed": mixed}, batches, significance=0.5)["5Mixed"]
    assert loose.accepted and loose.base_loss > loose.loss and 0 < loose.p_value < 0.25
    p = loose.p_value
    above = score_deltas(model, current, {"5Mixed": mixed}, batches, significance=2 * p)["5Mixed"]
    below = score_deltas(model, current, {"5Mixed": mixed}, batches, significance=p / 2)["5Mixed"]
    assert above.accepted and above.score == loose.score
    assert below.reject == Reject.NO_IMPROVEMENT and below.score == 0.0 and "not significant" in below.detail
    assert below.p_value == p  # the same rows, the same test: only the level decided


def test_a_delta_that_buys_domain_gain_with_general_loss_is_scored_down(setup):
    model, current, honest = setup
    domain, general = _batches(_pattern_rows(seed=99)), _batches(_pretrained_rows())
    plain = score_deltas(model, current, {"5Honest": honest}, domain, significance=0.05)["5Honest"]
    guarded = score_deltas(model, current, {"5Honest": honest}, domain, significance=0.05, general=general)["5Honest"]
    assert guarded.general_loss is not None
    rise = guarded.general_loss - batch_losses(model, general).mean
    assert rise > 0  # trained on one progression, it forgets the others a little
    assert guarded.score == pytest.approx(plain.score - rise, rel=1e-9, abs=1e-12)


def _pretrained_rows(steps=(2, 3, 4, 5)) -> torch.Tensor:
    """Progressions of other steps than the domain's 7, which the base was pre-trained on too: the toy's general text."""
    g = torch.Generator().manual_seed(6)
    step = torch.as_tensor(steps)[torch.randint(0, len(steps), (16, 1), generator=g)]
    return (torch.randint(0, 96, (16, 1), generator=g) + step * torch.arange(24)).remainder(90) + 3


def test_score_equals_a_reference_from_a_fresh_copy_with_the_delta_loaded(setup):
    model, current, honest = setup
    batches = _batches(_pattern_rows(seed=98, rows=10))  # a short last batch: weighting by tokens matters
    v = score_deltas(model, current, {"5Honest": honest}, batches, significance=0.5, batch_size=ROWS)["5Honest"]
    assert v.base_loss == pytest.approx(_reference_loss(model, None, batches), rel=1e-9)
    assert v.loss == pytest.approx(_reference_loss(model, honest, batches), rel=1e-9)


def _rows_by_expert(model, rows: torch.Tensor, layer: int) -> tuple[int, list[int], list[int]]:
    """An expert of `layer` that some rows route to and some do not: (expert, rows using it, rows not)."""
    used = []
    for row in rows:
        with RoutingRecorder(model) as rec, torch.no_grad():
            model(input_ids=row[None])
        used.append(set(rec.pop().layers[layer].ids.flatten().tolist()))
    counts = {e: sum(e in u for u in used) for e in range(8)}
    expert = min((e for e in counts if 0 < counts[e] < len(rows)), key=counts.__getitem__)
    return expert, [i for i, u in enumerate(used) if expert in u], [i for i, u in enumerate(used) if expert not in u]


def test_a_delta_that_makes_only_some_batches_non_finite_is_rejected_not_scored_on_the_rest():
    model = tiny_model("deepseek_v2")
    current = extract_slice(model, SLOTS, "fp")
    rows = torch.arange(3, 35)[:, None].expand(32, 24).contiguous()  # one token per row: each row uses few experts
    expert, poisoned, clean = _rows_by_expert(model, rows, layer=1)
    assert poisoned and len(clean) >= ROWS
    honest = _train(model, rows[clean], steps=6)
    w = honest.weights[ExpertSlot(1, expert)]
    attack_weights = dict(honest.weights)  # honest everywhere, plus an expert only the poisoned rows route to blown up
    g = torch.Generator().manual_seed(0)
    huge = [1e30 * torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (w.gate, w.up)]
    attack_weights[ExpertSlot(1, expert)] = ExpertWeights(gate=w.gate + huge[0], up=w.up + huge[1], down=w.down)
    attack = ExpertSlice("delta", current.model_type, "fp", attack_weights)
    clean_batches = rows_to_batches(rows, rows.clone(), clean, ROWS)
    all_batches = clean_batches + rows_to_batches(rows, rows.clone(), poisoned, ROWS)
    before = _snapshot(model)

    with applied(model, current, attack):  # only some batches go non-finite
        per_batch = batch_losses(model, all_batches, stop_at_non_finite=False).losses
    assert all(math.isfinite(x) for x in per_batch[: len(clean_batches)])
    assert not any(math.isfinite(x) for x in per_batch[len(clean_batches) :])

    # dropping the non-finite batches would have made the attack a winner ...
    on_clean = score_deltas(model, current, {"5Attack": attack}, clean_batches, significance=0.5)["5Attack"]
    assert on_clean.accepted and on_clean.score > 0
    # ... but every batch counts
    verdicts = score_deltas(model, current, {"5Attack": attack, "5Honest": honest}, all_batches, significance=0.5)
    assert verdicts["5Attack"].reject == Reject.NON_FINITE_LOSS and verdicts["5Attack"].score is None
    assert f"eval batch {len(clean_batches)} of {len(all_batches)}" in verdicts["5Attack"].detail
    assert verdicts["5Honest"].accepted
    assert _bit_identical(model, before)


def test_a_delta_over_other_slots_or_shapes_is_refused_and_changes_nothing(setup):
    model, current, honest = setup
    before = _snapshot(model)
    partial = ExpertSlice("delta", current.model_type, "fp", {s: honest.weights[s] for s in SLOTS[:3]})
    w = honest.weights[SLOTS[0]]
    misshapen = ExpertSlice("delta", current.model_type, "fp", {**honest.weights, SLOTS[0]: ExpertWeights(w.gate[:, :-1], w.up, w.down)})
    verdicts = score_deltas(model, current, {"5Partial": partial, "5Shape": misshapen}, _batches(_pattern_rows(7, rows=4)), significance=0.5)
    assert verdicts["5Partial"].reject == Reject.WRONG_KEYS
    assert verdicts["5Shape"].reject == Reject.WRONG_SHAPE and "gate_proj.weight has shape" in verdicts["5Shape"].detail
    assert _bit_identical(model, before)


def test_scoring_refuses_a_model_that_does_not_hold_the_current_state(setup):
    model, current, honest = setup
    stale = extract_slice(tiny_model("deepseek_v2", seed=1), SLOTS, "fp")
    with pytest.raises(ModelError, match="does not hold the current expert state"):
        score_deltas(model, stale, {"5Honest": honest}, _batches(_pattern_rows(7, rows=4)), significance=0.5)


def test_scoring_cost_reports_seconds_and_restores_the_model(setup):
    model, current, honest = setup
    before = _snapshot(model)
    cost = scoring_cost(model, current, honest, _batches(_pattern_rows(5, rows=8)))
    assert cost.eval_s > 0 and cost.score_s > 0 and cost.ratio > 0
    assert _bit_identical(model, before)
