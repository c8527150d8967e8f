import json

import pytest
import torch
from pydantic import ValidationError
from torch.optim.optimizer import register_optimizer_step_pre_hook

from moeforge.data.packing import Packed
from moeforge.errors import ConfigError, ModelError
from moeforge.model.experts import ExpertSlot, read_expert
from moeforge.model.fingerprint import model_fingerprint
from moeforge.model.slices import apply_slice, remove_delta
from harness.baselines import train_full, train_lora
from moeforge.train.config import DEFAULT_STEPS, TrainConfig
from moeforge.train.esft import train_experts
from moeforge.train.loop import train
from moeforge.train.metrics import METRICS_FILE
from tests.model.tiny import tiny_model

SLOTS = [ExpertSlot(1, 0), ExpertSlot(1, 5), ExpertSlot(2, 3)]


def _packed(rows: int = 16, seq_len: int = 24, masked: bool = False) -> Packed:
    """A learnable toy corpus: rows of a repeating pattern; `masked` hides a varying prefix of each row."""
    pattern = torch.arange(seq_len).remainder(7) + 10
    ids = torch.stack([pattern.roll(i) for i in range(rows)])
    labels = ids.clone()
    if masked:
        for i in range(rows):
            labels[i, : (i * 5) % (seq_len - 2)] = -100
    return Packed(input_ids=ids, labels=labels, n_tokens=ids.numel(), n_loss_tokens=int((labels != -100).sum()))


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"lr": 1e-2, "steps": 4, "batch_size": 4, "warmup_steps": 1, "weight_decay": 0.1, **kw})


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_train_experts_returns_the_model_bit_identical_and_its_delta_changes_only_the_selected_experts():
    model = tiny_model("deepseek_v2")
    before = _state(model)
    fingerprint = model_fingerprint(model)
    delta, result = train_experts(model, SLOTS, _packed(), _cfg(weight_decay=0.5), base_fingerprint=fingerprint)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)  # weight decay moved nothing it should not
    assert all(p.requires_grad for p in model.parameters())
    assert delta.kind == "delta" and delta.slots == SLOTS and delta.base_fingerprint == fingerprint
    assert result.trainable_params == delta.num_params() and len(result.history) == 4

    apply_slice(model, delta)
    applied = model.state_dict()
    for key in before:
        if key.endswith(("experts.gate_up_proj", "experts.down_proj")):
            layer = int(key.split(".")[2])
            for e in range(before[key].shape[0]):
                moved = not torch.equal(applied[key][e], before[key][e])
                assert moved == (ExpertSlot(layer, e) in SLOTS), (key, e)
        else:
            assert torch.equal(applied[key], before[key]), key
    remove_delta(model, delta)
    assert model_fingerprint(model) == fingerprint


def test_training_the_selected_experts_lowers_the_loss():
    model = tiny_model("qwen3_moe")
    slots = [ExpertSlot(layer, e) for layer in (0, 2) for e in range(8)]
    _, result = train_experts(model, slots, _packed(), _cfg(steps=20, weight_decay=0.0), base_fingerprint="fp")
    losses = [h.loss for h in result.history]
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0]  # a frozen random LM head bounds how far it can go
    assert result.tokens == 20 * 4 * 24 and result.tokens_per_s > 0 and result.peak_mem_bytes > 0


class _Stop(Exception):
    pass


def _stop_at(step: int):
    def on_step(info):
        if info.step == step:
            raise _Stop
    return on_step


def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    cfg = _cfg(steps=6, checkpoint_every=3, grad_accum=2, batch_size=2)
    packed = _packed(masked=True)
    model = tiny_model("deepseek_v2")
    straight, straight_result = train_experts(model, SLOTS, packed, cfg, base_fingerprint="fp", run_dir=tmp_path / "a")

    fingerprint = model_fingerprint(model)
    with pytest.raises(_Stop):
        train_experts(model, SLOTS, packed, cfg, base_fingerprint="fp", run_dir=tmp_path / "b", on_step=_stop_at(4))
    assert model_fingerprint(model) == fingerprint  # an interrupted run still returns the model to base
    assert len((tmp_path / "b" / METRICS_FILE).read_text().splitlines()) == 4  # step 4 ran past the checkpoint
    seen = []
    resumed, resumed_result = train_experts(model, SLOTS, packed, cfg, base_fingerprint="fp", run_dir=tmp_path / "b", on_step=seen.append)

    assert [s.step for s in seen] == [4, 5, 6]
    for slot in SLOTS:
        for a, b in zip(straight.weights[slot].tensors().values(), resumed.weights[slot].tensors().values()):
            assert torch.equal(a, b)
    assert [h.loss for h in straight_result.history] == [h.loss for h in resumed_result.history]
    lines = [json.loads(line) for line in (tmp_path / "b" / METRICS_FILE).read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    files = sorted(p.name for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files == ["config.json", "metrics.jsonl", "progress.json", "state.safetensors"]
    assert json.loads((tmp_path / "b" / "config.json").read_text())["config"]["steps"] == 6


def test_resuming_with_another_config_is_a_config_error(tmp_path):
    model = tiny_model("olmoe")
    slots = [ExpertSlot(0, 1)]
    train_experts(model, slots, _packed(), _cfg(checkpoint_every=2), base_fingerprint="fp", run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"lr was 0.01, now 0.02.*resume=False"):
        train_experts(model, slots, _packed(), _cfg(checkpoint_every=2, lr=2e-2), base_fingerprint="fp", run_dir=tmp_path)
    with pytest.raises(ConfigError, match="slots was '0:1', now '0:2'"):
        train_experts(model, [ExpertSlot(0, 2)], _packed(), _cfg(checkpoint_every=2), base_fingerprint="fp", run_dir=tmp_path)
    # starting over is always possible
    _, result = train_experts(model, slots, _packed(), _cfg(checkpoint_every=2, lr=2e-2), base_fingerprint="fp",
                              run_dir=tmp_path, resume=False)
    assert len(result.history) == 4


def test_gradient_accumulation_equals_one_larger_batch():
    packed = _packed(masked=True)  # micro-batches hold different numbers of labelled tokens
    deltas, losses = [], []
    for batch_size, grad_accum in ((4, 1), (2, 2)):
        model = tiny_model("mixtral")
        cfg = _cfg(steps=2, batch_size=batch_size, grad_accum=grad_accum, lr=1e-3)
        delta, result = train_experts(model, [ExpertSlot(0, 2), ExpertSlot(1, 6)], packed, cfg, base_fingerprint="fp")
        deltas.append(delta)
        losses.append([h.loss for h in result.history])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for slot in deltas[0].slots:
        for a, b in zip(deltas[0].weights[slot].tensors().values(), deltas[1].weights[slot].tensors().values()):
            assert torch.allclose(a, b, atol=1e-6, rtol=0)


@pytest.fixture
def grad_norms_at_step():
    """The global gradient norm of each optimizer's parameters when it steps, i.e. after clipping."""
    seen = []

    def hook(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(hook)
    yield seen
    handle.remove()


def test_clipping_caps_the_gradient_norm(grad_norms_at_step):
    model = tiny_model("deepseek_v2")
    _, result = train_experts(model, SLOTS, _packed(), _cfg(max_grad_norm=1e-3), base_fingerprint="fp")
    assert all(h.grad_norm > 1e-3 for h in result.history)  # recorded before clipping
    assert len(grad_norms_at_step) == 4 and max(grad_norms_at_step) <= 1e-3 * (1 + 1e-4)


def test_no_clipping_leaves_the_gradient_norm(grad_norms_at_step):
    model = tiny_model("deepseek_v2")
    _, result = train_experts(model, SLOTS, _packed(), _cfg(max_grad_norm=0), base_fingerprint="fp")
    assert grad_norms_at_step == pytest.approx([h.grad_norm for h in result.history], rel=1e-5)


def test_a_nonexistent_slot_is_refused_before_training():
    model = tiny_model("deepseek_v2")
    fingerprint = model_fingerprint(model)
    with pytest.raises(ModelError, match="expert 8 does not exist"):
        train_experts(model, [ExpertSlot(1, 8)], _packed(), _cfg(), base_fingerprint=fingerprint)
    assert model_fingerprint(model) == fingerprint


def test_train_full_changes_every_parameter_and_costs_more_memory_than_esft():
    packed = _packed()
    model = tiny_model("deepseek_v2")
    _, esft = train_experts(model, SLOTS, packed, _cfg(), base_fingerprint="fp")
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    full = train_full(model, packed, _cfg())
    assert all(not torch.equal(p, before[k]) for k, p in model.named_parameters())
    assert full.trainable_params == sum(p.numel() for p in model.parameters()) > esft.trainable_params
    assert esft.memory_method == full.memory_method == "counted_tensors"
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert weights < esft.peak_mem_bytes < full.peak_mem_bytes
    assert full.peak_mem_bytes > 3 * weights  # weights, gradients and two AdamW moments


@pytest.mark.parametrize("target_experts", [False, True])
def test_train_lora_merges_low_rank_updates_into_the_linear_layers(target_experts):
    model = tiny_model("deepseek_v2")
    before = _state(model)
    attention = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".self_attn." in n}
    merged, result = train_lora(model, _packed(), _cfg(steps=6, lr=1e-2), rank=4, target_experts=target_experts)
    assert type(merged).__name__ == "DeepseekV2ForCausalLM" and merged.state_dict().keys() == before.keys()
    after = merged.state_dict()
    changed = {k for k in before if not torch.equal(after[k], before[k])}
    experts = {f"model.layers.{i}.mlp.experts.{n}" for i in (1, 2) for n in ("gate_up_proj", "down_proj")}
    assert changed == (attention | experts if target_experts else attention)
    assert result.history[-1].loss < result.history[0].loss
    assert all(p.requires_grad for p in merged.parameters())


def test_steps_come_from_a_token_budget_or_the_default():
    assert TrainConfig().total_steps(24) == DEFAULT_STEPS
    assert TrainConfig(tokens=1000, batch_size=4, grad_accum=2).total_steps(24) == 6  # ceil(1000 / 192)
    with pytest.raises(ValidationError, match="not both"):
        TrainConfig(steps=3, tokens=1000)
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(learning_rate=1e-3)


def test_bf16_autocast_runs_on_cpu_when_asked():
    model = tiny_model("qwen2_moe")
    _, result = train_experts(model, [ExpertSlot(1, 1)], _packed(), _cfg(steps=2, bf16="on"), base_fingerprint="fp")
    assert all(torch.isfinite(torch.tensor(h.loss)) for h in result.history)


def test_generic_loop_refuses_an_empty_parameter_list():
    with pytest.raises(ConfigError, match="nothing to train"):
        train(tiny_model("olmoe"), [], _packed(), _cfg())


def test_a_bf16_model_returns_to_base_and_its_delta_is_exact():
    model = tiny_model("olmoe").to(torch.bfloat16)
    fingerprint = model_fingerprint(model)
    slot = ExpertSlot(1, 4)
    base = read_expert(model, slot)
    delta, _ = train_experts(model, [slot], _packed(), _cfg(steps=2), base_fingerprint=fingerprint)
    assert model_fingerprint(model) == fingerprint
    assert all(t.dtype == torch.float32 and t.abs().sum() > 0 for t in delta.weights[slot].tensors().values())
    apply_slice(model, delta)
    assert not torch.equal(read_expert(model, slot).up, base.up)
    remove_delta(model, delta)
    assert model_fingerprint(model) == fingerprint


def test_activation_checkpointing_trains_the_same_delta_and_is_switched_off_after():
    plain, _ = train_experts(tiny_model("deepseek_v2"), SLOTS, _packed(), _cfg(), base_fingerprint="fp")
    model = tiny_model("deepseek_v2")
    recomputed, result = train_experts(model, SLOTS, _packed(), _cfg(activation_checkpointing=True), base_fingerprint="fp")
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), recomputed.state_dict().values(), strict=True))
    assert not model.is_activation_checkpointing
    assert result.peak_mem_bytes > 0


def test_offload_mode_trains_the_same_delta_as_full_mode_bit_for_bit():
    from moeforge.extract.package import reduce_for_mode

    full, _ = train_experts(tiny_model("deepseek_v2"), SLOTS, _packed(), _cfg(), base_fingerprint="fp")
    model = tiny_model("deepseek_v2")
    reduce_for_mode(model, "offload", SLOTS)
    offloaded, _ = train_experts(model, SLOTS, _packed(), _cfg(activation_checkpointing=True), base_fingerprint="fp")
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), offloaded.state_dict().values(), strict=True))
    assert full.num_params() > 0 and any(t.abs().sum() > 0 for t in offloaded.state_dict().values())


def _wide_model():
    """The tiny DeepSeek-V2 with experts of 4,096 values per matrix: bitsandbytes keeps smaller tensors in 32 bits."""
    from transformers import AutoModelForCausalLM

    from tests.model.tiny import tiny_config

    config = tiny_config("deepseek_v2")
    config.moe_intermediate_size = 128
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def test_8bit_adamw_trains_with_a_quarter_of_the_moment_bytes():
    packed = _packed()
    _, plain = train_experts(_wide_model(), SLOTS, packed, _cfg(steps=8, weight_decay=0.0), base_fingerprint="fp")
    _, lean = train_experts(_wide_model(), SLOTS, packed, _cfg(steps=8, weight_decay=0.0, optimizer="adamw_8bit"),
                            base_fingerprint="fp")
    moments = 8 * plain.trainable_params  # fp32 exp_avg and exp_avg_sq
    assert plain.peak_mem_bytes - lean.peak_mem_bytes > 0.6 * moments  # 8-bit moments: ~2 bytes per parameter (+ tables), not 8
    assert lean.history[-1].loss < lean.history[0].loss
    assert abs(lean.final_loss - plain.final_loss) < 0.05 * plain.final_loss


def test_an_8bit_adamw_run_resumes_bit_identically(tmp_path):
    cfg = _cfg(steps=6, checkpoint_every=3, optimizer="adamw_8bit")
    packed = _packed()
    straight, _ = train_experts(_wide_model(), SLOTS, packed, cfg, base_fingerprint="fp", run_dir=tmp_path / "a")
    model = _wide_model()
    with pytest.raises(_Stop):
        train_experts(model, SLOTS, packed, cfg, base_fingerprint="fp", run_dir=tmp_path / "b", on_step=_stop_at(4))
    resumed, _ = train_experts(model, SLOTS, packed, cfg, base_fingerprint="fp", run_dir=tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True))


def test_8bit_adamw_without_its_extra_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # importing it raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'moeforge\[lean\]'"):
        train_experts(tiny_model("deepseek_v2"), SLOTS, _packed(), _cfg(optimizer="adamw_8bit"), base_fingerprint="fp")


def test_the_chunked_loss_is_the_models_loss_and_holds_fewer_activations():
    from moeforge.model.loss import chunked_lm_loss

    packed = _packed(masked=True)
    model = tiny_model("qwen3_moe")
    ids, labels = packed.input_ids[:4], packed.labels[:4]
    torch.testing.assert_close(chunked_lm_loss(model, ids, labels, 7), model(input_ids=ids, labels=labels).loss, rtol=1e-6, atol=1e-6)
    whole, whole_result = train_experts(tiny_model("qwen3_moe"), [ExpertSlot(0, 1), ExpertSlot(2, 3)], packed, _cfg(),
                                        base_fingerprint="fp")
    chunked, chunked_result = train_experts(tiny_model("qwen3_moe"), [ExpertSlot(0, 1), ExpertSlot(2, 3)], packed,
                                            _cfg(loss_chunk_tokens=16), base_fingerprint="fp")
    for a, b in zip(whole.state_dict().values(), chunked.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert chunked_result.peak_mem_bytes < whole_result.peak_mem_bytes  # the full logits are never saved


def test_the_chunked_loss_refuses_a_model_that_adds_the_router_loss():
    from moeforge.model.loss import chunked_lm_loss

    model = tiny_model("mixtral")
    model.config.output_router_logits = True
    with pytest.raises(ConfigError, match="output_router_logits"):
        chunked_lm_loss(model, _packed().input_ids[:2], _packed().labels[:2], 8)
