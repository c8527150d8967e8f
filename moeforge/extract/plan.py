"""Device-memory plans: the bytes a miner's accelerator must hold, by kind, in each miner mode.

One idea: build the config's model on the meta device, reduce it as the mode does
(`package.reduce_for_mode`), and count every tensor it then holds by the module that holds it.
Weights are therefore exact counts; trainable state is exact arithmetic on the expert size;
activations are an *estimate* from the formula in `activation_bytes`. DESIGN.md "Miners' memory".

- full / quantized / subset: the modes `package.py` builds.
- offload (`offload.py`): frozen routed experts stay in host memory, and the device holds the
  working set of the worst routing: the distinct experts one micro-batch can route to in one
  layer, min(E, batch × seq × top_k), for one layer: the offload mode frees what a layer fetched
  when the layer returns and fetches again, one weight at a time, in the backward pass (its
  `WorkingSetMeter` measures this; a test asserts it); for two with `prefetch`.

`parts` splits the selected slots (trainable_per_layer × MoE layers) into balanced parts, one
per miner; a plan is for the largest part, ceil(slots / parts). Per trained parameter the miner
holds the float32 master copy it trains (4 bytes), its float32 gradient (4) and AdamW's exp_avg
and exp_avg_sq: 8 bytes in float32, about 2 with `--optimizer adamw_8bit` (`moment_bytes`); in
full, quantized and subset mode the model also keeps its own 16-bit copy of those experts
(counted under routed experts), in offload it does not. `fraction_of_full` is of full mode as
built (unpartitioned, float32 AdamW, the model's own loss) at the same batch, seq and
checkpointing; `fraction_of_full_same_training` of an unpartitioned full-mode miner with this
plan's optimizer and loss chunking too. A card "fits" when the total is at most its capacity in
GiB; the CUDA context and allocator fragmentation are not counted.
"""

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from moeforge.errors import ConfigError
from moeforge.extract.package import MODES, MinerMode, held_bytes, reduce_for_mode
from moeforge.model.experts import ExpertSlot
from moeforge.model.families import family_of, moe_layers
from moeforge.model.sizing import size_of_model
from moeforge.train.config import OPTIMIZERS

CARDS_GIB = (16, 24, 48, 80)  # common accelerator memories
ESFT_SHARE = 0.1  # default trainable share of a layer's experts: the middle of ESFT's 5–15% (DESIGN.md "ESFT, exactly")
COVERAGE_SHARE = 0.5  # default subset: half the experts per layer (at least top_k), as a job's plan sizes it
WORKING_LAYERS = 1  # offload: layers whose working sets are on the device at once without prefetch (offload.py)
GIB = 2**30


@dataclass(frozen=True)
class DevicePlan:
    model_type: str
    mode: MinerMode
    parts: int
    trainable_per_layer: int
    part_experts: int  # routed experts this miner trains: the largest of `parts` balanced parts
    kept_per_layer: int | None  # subset: experts held per MoE layer (with the trained ones); None in other modes
    batch: int
    seq: int
    checkpointing: bool
    # non-expert weights, bytes on the device in every mode
    embeddings: int  # token embeddings and the LM head (once if tied)
    attention: int
    dense_mlps: int  # the MLPs of dense decoder layers (DeepSeek's first layers)
    shared_experts: int  # with Qwen's shared-expert gate
    routers: int
    norms_buffers: int  # norms, rotary tables and every other small tensor
    # routed experts
    routed_experts: int  # frozen routed-expert bytes on the device (offload: the working set)
    host_experts: int  # offload: routed-expert bytes kept in host memory; 0 in the other modes
    # the miner's part
    master: int  # float32 copies of the part's experts: the parameters trained
    grads: int  # float32, one per trained value
    optimizer: int  # AdamW exp_avg + exp_avg_sq, float32
    # estimates (activation_bytes)
    activations_checkpointed: int
    activations_stored: int  # without checkpointing
    full_total: int  # full mode as built: unpartitioned, float32 AdamW, the model's own loss; same experts, batch, seq, checkpointing
    optimizer_kind: str = "adamw"
    loss_chunk_tokens: int = 0
    prefetch: bool = False  # offload: the next layer's guessed working set counted too
    full_total_same_training: int = 0  # an unpartitioned full-mode miner with this plan's optimizer and loss chunking

    @property
    def non_expert(self) -> int:
        return self.embeddings + self.attention + self.dense_mlps + self.shared_experts + self.routers + self.norms_buffers

    @property
    def weights(self) -> int:
        return self.non_expert + self.routed_experts

    @property
    def trainable_state(self) -> int:
        return self.master + self.grads + self.optimizer

    @property
    def activations(self) -> int:
        return self.activations_checkpointed if self.checkpointing else self.activations_stored

    @property
    def total(self) -> int:
        return self.weights + self.trainable_state + self.activations

    @property
    def fraction_of_full(self) -> float:
        return self.total / self.full_total

    @property
    def fraction_of_full_same_training(self) -> float:
        return self.total / self.full_total_same_training

    @property
    def card_gib(self) -> int | None:
        """The smallest common card (GiB) the total fits on, or None if none does."""
        return next((gib for gib in CARDS_GIB if self.total <= gib * GIB), None)

    def to_json(self) -> dict:
        derived = ("non_expert", "weights", "trainable_state", "activations", "total", "fraction_of_full",
                   "fraction_of_full_same_training", "card_gib")
        return {**asdict(self), **{name: getattr(self, name) for name in derived}}


def plan_device(config, mode: MinerMode, *, parts: int = 1, trainable_per_layer: int | None = None,
                kept_per_layer: int | None = None, batch: int = 1, seq: int = 2048, checkpointing: bool = True,
                optimizer: str = "adamw", loss_chunk_tokens: int = 0, prefetch: bool = False,
                dtype: torch.dtype = torch.bfloat16) -> DevicePlan:
    """The device plan of a miner of `mode` for `config`'s model, computed on the meta device.

    `trainable_per_layer` defaults to ESFT_SHARE of a layer's experts, `kept_per_layer` (subset)
    to COVERAGE_SHARE of them and at least top_k. A mode the family does not support (subset needs a
    softmax-then-top-k router, quantized a fused layout) raises ModelError, as building it would.
    `optimizer` and `loss_chunk_tokens` are TrainConfig's; `prefetch` (offload) counts a second layer's working set.
    """
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r} is not a miner mode (modes: {', '.join(MODES)}).")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}.")
    if loss_chunk_tokens < 0:
        raise ConfigError(f"--loss-chunk {loss_chunk_tokens}: must be 0 (the whole loss at once) or more.")
    for flag, value in (("--parts", parts), ("--batch", batch), ("--seq", seq)):
        if value < 1:
            raise ConfigError(f"{flag} {value}: must be at least 1; pass {flag} 1 or more.")
    family_of(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    size = size_of_model(model)
    layers = moe_layers(model)
    n_experts, top_k = layers[0].num_experts, layers[0].top_k
    trainable_per_layer = max(1, round(ESFT_SHARE * n_experts)) if trainable_per_layer is None else trainable_per_layer
    if not 1 <= trainable_per_layer <= n_experts:
        raise ConfigError(f"--trainable-per-layer {trainable_per_layer}: a layer has {n_experts} routed experts; "
                          f"pass 1 to {n_experts}.")
    slots = [ExpertSlot(l.index, e) for l in layers for e in range(trainable_per_layer)]
    if parts > len(slots):
        raise ConfigError(f"--parts {parts} is more than the {len(slots)} selected experts to split "
                          f"(--trainable-per-layer {trainable_per_layer} × {len(layers)} MoE layers); pass at most {len(slots)}.")
    mine = slots[: math.ceil(len(slots) / parts)]  # the largest part of a balanced split
    stored, checkpointed = activation_bytes(model, batch * seq, dtype, loss_chunk_tokens)
    as_built = activation_bytes(model, batch * seq, dtype)[1 if checkpointing else 0]
    full_weights = held_bytes(model)
    if mode != "subset":
        kept_per_layer = None
    elif kept_per_layer is None:
        kept_per_layer = max(top_k, round(COVERAGE_SHARE * n_experts))
    if mode in ("quantized", "subset"):
        kept = None if kept_per_layer is None else {l.index: list(range(kept_per_layer)) for l in layers}
        reduce_for_mode(model, mode, mine, kept)
    kinds = bytes_by_kind(model)
    routed, host = kinds.pop("routed_experts"), 0
    if mode == "offload":
        distinct = min(n_experts, batch * seq * top_k)  # the worst routing: every slot a different expert
        routed, host = min(WORKING_LAYERS + prefetch, len(layers)) * distinct * size.bytes_per_expert, routed
    state = 4 * size.params_per_expert
    moments = moment_bytes(size.params_per_expert, optimizer)
    activations = checkpointed if checkpointing else stored
    full_total = full_weights + 16 * size.params_per_expert * len(slots) + as_built
    same_training = full_weights + (2 * state + moments) * len(slots) + activations
    return DevicePlan(
        model_type=config.model_type, mode=mode, parts=parts, trainable_per_layer=trainable_per_layer,
        part_experts=len(mine), kept_per_layer=kept_per_layer, batch=batch, seq=seq, checkpointing=checkpointing, **kinds,
        routed_experts=routed, host_experts=host, master=state * len(mine), grads=state * len(mine),
        optimizer=moments * len(mine), activations_checkpointed=checkpointed, activations_stored=stored,
        full_total=full_total, optimizer_kind=optimizer, loss_chunk_tokens=loss_chunk_tokens, prefetch=prefetch and mode == "offload",
        full_total_same_training=same_training,
    )


def moment_bytes(params_per_expert: int, optimizer: str) -> int:
    """AdamW's exp_avg + exp_avg_sq bytes for one expert: float32 (8 per value), or bitsandbytes' 8-bit block-wise
    states (1 byte each per value plus a float32 scale per 256 values) for each of its three matrices."""
    if optimizer == "adamw":
        return 8 * params_per_expert
    matrix = params_per_expert // 3
    return 3 * (2 * matrix + 2 * 4 * math.ceil(matrix / 256))


def bytes_by_kind(model) -> dict[str, int]:
    """Bytes of every distinct parameter and buffer, by the kind of module that holds it.

    Sums to `package.held_bytes(model)`: the state dict's bytes plus non-persistent buffers
    (rotary tables, a subset's masks). Kinds are read off the module path, after any reduction.
    """
    family = family_of(model.config)
    prefixes: list[tuple[str, str]] = []
    moe = {layer.index: layer for layer in moe_layers(model)}
    for index in range(len(model.model.layers)):
        block = f"model.layers.{index}.{family.block}"
        if index not in moe:
            prefixes.append((f"{block}.", "dense_mlps"))
            continue
        prefixes += [(f"{block}.experts.", "routed_experts"), (f"{block}.{family.router}.", "routers")]
        if family.shared is not None:
            prefixes.append((f"{block}.{family.shared}", "shared_experts"))  # no dot: Qwen's shared_expert_gate too
    prefixes += [("model.embed_tokens.", "embeddings"), ("lm_head.", "embeddings")]
    kinds = dict.fromkeys(("embeddings", "attention", "dense_mlps", "shared_experts", "routers", "norms_buffers",
                           "routed_experts"), 0)
    seen = set()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        kind = next((k for p, k in prefixes if name.startswith(p)), "attention" if ".self_attn." in name else "norms_buffers")
        kinds[kind] += t.numel() * t.element_size()
    return kinds


def activation_bytes(model, tokens: int, dtype: torch.dtype = torch.bfloat16, loss_chunk_tokens: int = 0) -> tuple[int, int]:
    """(without checkpointing, with per-decoder-layer checkpointing): an estimate, in bytes.

    For T = batch × seq tokens, activations of b bytes (the compute dtype) and, per decoder layer l,
    w_l values per token:
        w_l = Σ over the layer's projections (nn.Linear: attention, shared and dense MLPs) of in + out
              + 2H (the layer input and the residual after attention, into the two norms)
              + top_k × (2H + 3I) in a MoE layer (each routed copy: input, gate|up 2I, act·up I, output H)
        plus 2E float32 router values (logits and probabilities) in a MoE layer;
        logits = T × V × (b + 4 + 4) (the logits, their float32 copy, the log-softmax kept by the loss),
        for min(T, loss_chunk_tokens) positions instead of T with the chunked loss (model.loss.chunked_lm_loss).
    Without checkpointing every layer keeps its w_l: T × Σ_l layer_l + logits. With it, each layer
    keeps only its input, and one layer is recomputed at a time: T × L × H × b + T × max_l layer_l + logits.
    Attention is fused (SDPA or flash): no seq × seq score matrix is kept. The trainer checkpoints
    per decoder layer with `TrainConfig.activation_checkpointing`.
    """
    b = torch.empty((), dtype=dtype).element_size()
    config = model.config
    hidden, vocab = config.hidden_size, model.get_output_embeddings().weight.shape[0]
    family = family_of(config)
    moe = {layer.index: layer for layer in moe_layers(model)}
    per_layer = []
    for index, decoder_layer in enumerate(model.model.layers):
        layer = moe.get(index)
        skip = () if layer is None else (layer.experts, layer.router)
        inside = {id(m) for s in skip for m in s.modules()}
        values = 2 * hidden + sum(m.in_features + m.out_features for m in decoder_layer.modules()
                                  if isinstance(m, nn.Linear) and id(m) not in inside)
        router = 0
        if layer is not None:
            gate_up = layer.experts.gate_up_proj  # fused [E, 2I, H]; transposed and interleaved [E, H, 2I]
            inter = (gate_up.shape[1] if family.layout == "fused" else gate_up.shape[2]) // 2
            values += layer.top_k * (2 * hidden + 3 * inter)
            router = 2 * layer.num_experts * 4
        per_layer.append(values * b + router)
    logits = (min(tokens, loss_chunk_tokens) if loss_chunk_tokens else tokens) * vocab * (b + 8)
    stored = tokens * sum(per_layer) + logits
    checkpointed = tokens * len(per_layer) * hidden * b + tokens * max(per_layer) + logits
    return stored, checkpointed
