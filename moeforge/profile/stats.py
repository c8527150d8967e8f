"""Routing statistics: run domain tokens through the frozen base model and count, per layer, who gets them.

ESFT (Wang et al. 2024, arXiv 2407.01906; DESIGN.md "ESFT, exactly") profiles about 131k tokens
of the task's data and scores each routed expert by its share of the layer's top-k slots
(token selection ratio) or its mean gate weight (gate score); REAP (Lasby et al. 2025, arXiv
2510.13999) adds a saliency, the mean over routed tokens of gate × ‖expert output‖. Routing is
read from the routers' own outputs (RoutingRecorder), never recomputed. Every score is
normalised per layer. Only real tokens count: the padding that ends the last packed row, and
tokens past the budget, are run through the model (it is causal, so they change nothing
before them) but never counted.
"""

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, Field

from moeforge.data.fingerprint import fingerprint_records
from moeforge.data.formatting import Example, encode_records
from moeforge.data.packing import pack_examples
from moeforge.data.records import Record
from moeforge.errors import ConfigError, DataError
from moeforge.model.families import MoeLayer, moe_layers
from moeforge.model.fingerprint import model_fingerprint
from moeforge.model.routing import RoutingRecorder, RoutingTrace
from moeforge.profile.contribution import ContributionRecorder
from moeforge.profile.profile_file import RoutingProfile

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MAX_DEFAULT_SEQ_LEN = 256
_ENCODE_CHUNK = 64  # records tokenized at a time while filling the token budget


class ProfileConfig(BaseModel):
    """How much data to profile and how to batch it; the defaults are ESFT's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: int = Field(131_072, ge=1)  # budget of real tokens
    seq_len: int | None = Field(None, ge=2)  # None: the model's max_position_embeddings, capped at 256
    batch_size: int = Field(8, ge=1)  # packed rows per forward pass
    saliency: bool = True  # also compute REAP saliency (one extra pass through the routed experts)


@dataclass(frozen=True)
class BatchInfo:
    batch: int  # 1-based index of the batch just profiled
    batches: int
    tokens: int  # real tokens counted so far
    total_tokens: int  # real tokens to count in all


BatchCallback = Callable[[BatchInfo], None]


def default_seq_len(model) -> int:
    """The model's max_position_embeddings, capped at 256 (routing statistics need no long context)."""
    return min(int(getattr(model.config, "max_position_embeddings", None) or MAX_DEFAULT_SEQ_LEN), MAX_DEFAULT_SEQ_LEN)


def profile_records(
    model,
    tokenizer: "PreTrainedTokenizerBase",
    records: Sequence[Record],
    config: ProfileConfig = ProfileConfig(),
    *,
    base_fingerprint: str | None = None,
    on_batch: BatchCallback | None = None,
) -> RoutingProfile:
    """Profile the first `config.tokens` tokens of `records`, packed into rows as training packs them."""
    if not records:
        raise DataError("no records to profile. Check the data file and the field options.")
    seq_len = config.seq_len or default_seq_len(model)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise ConfigError(
            f"seq_len {seq_len} exceeds the model's max_position_embeddings {limit}. Pass --seq-len {limit} or less."
        )
    examples, used = _encode_until(records, tokenizer, config.tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    packed = pack_examples(examples, seq_len, pad_id)
    if packed.n_tokens < config.tokens:
        log.warning(
            "the data holds %s tokens, fewer than the budget of %s; profiling all of them",
            f"{packed.n_tokens:,}", f"{config.tokens:,}",
        )
    return profile_routing(
        model,
        packed.input_ids,
        n_tokens=min(config.tokens, packed.n_tokens),
        batch_size=config.batch_size,
        saliency=config.saliency,
        data_fingerprint=fingerprint_records(records),
        records_used=used,
        base_fingerprint=base_fingerprint,
        on_batch=on_batch,
    )


def profile_routing(
    model,
    input_ids: torch.Tensor,
    *,
    n_tokens: int | None = None,
    batch_size: int = 8,
    saliency: bool = True,
    data_fingerprint: str = "",
    records_used: int | None = None,
    base_fingerprint: str | None = None,
    on_batch: BatchCallback | None = None,
) -> RoutingProfile:
    """Profile the first `n_tokens` positions of the flattened rows `input_ids` [N, L] (default: all).

    The model runs in eval mode under no_grad, `batch_size` rows at a time; `base_fingerprint`
    is computed from the weights unless given.
    """
    total = input_ids.numel() if n_tokens is None else n_tokens
    if input_ids.dim() != 2 or not 1 <= total <= input_ids.numel():
        raise ConfigError(
            f"cannot profile {total} tokens of input_ids with shape {tuple(input_ids.shape)}: expected rows [N, L] "
            f"holding at least that many tokens (and n_tokens ≥ 1)."
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1 (got {batch_size}).")
    layers = moe_layers(model)
    sums = count_routing(model, input_ids, total, batch_size=batch_size, saliency=saliency, on_batch=on_batch)
    fingerprint = model_fingerprint(model) if base_fingerprint is None else base_fingerprint
    return sums.to_profile(
        model_type=model.config.model_type,
        base_fingerprint=fingerprint,
        data_fingerprint=data_fingerprint,
        records_used=records_used,
        seq_len=input_ids.shape[1],
        top_k=layers[0].top_k,
        num_experts=layers[0].num_experts,
    )


@dataclass(eq=False)
class RoutingSums:
    """Raw per-layer sums, on the model's device, before normalisation; `add` accumulates in place."""

    tokens: int
    counts: dict[int, torch.Tensor]  # [E] int64, top-k slots per expert
    gate_sums: dict[int, torch.Tensor]  # [E] float64, gate weight summed over tokens
    saliency_sums: dict[int, torch.Tensor] | None  # [E] float64, |gate| × ‖expert output‖ over routed tokens

    def add(self, trace: RoutingTrace, contributions: dict[int, torch.Tensor] | None, real: int) -> None:
        """Add the first `real` tokens of one forward pass."""
        for index, counts in self.counts.items():
            routing = trace.layers[index]
            ids = routing.ids[:real].reshape(-1)
            counts += torch.bincount(ids, minlength=counts.numel())
            self.gate_sums[index].index_add_(0, ids, routing.weights[:real].reshape(-1).double())
            if self.saliency_sums is not None:
                self.saliency_sums[index] += contributions[index][:real].sum(dim=0, dtype=torch.float64)

    def to_profile(self, **fields) -> RoutingProfile:
        """The normalised scores with the raw sums, as a RoutingProfile."""
        counts = {i: c.cpu() for i, c in self.counts.items()}
        gate_sums = {i: g.cpu() for i, g in self.gate_sums.items()}
        saliency_sums = saliency = None
        if self.saliency_sums is not None:
            saliency_sums = {i: s.cpu() for i, s in self.saliency_sums.items()}
            saliency = {i: _normalised(_mean_where_routed(saliency_sums[i], counts[i])) for i in counts}
        return RoutingProfile(
            tokens=self.tokens,
            layers=tuple(sorted(counts)),
            token={i: _normalised(c.double()) for i, c in counts.items()},
            gate={i: _normalised(g) for i, g in gate_sums.items()},
            saliency=saliency,
            counts={i: tuple(int(v) for v in c) for i, c in counts.items()},
            gate_sums={i: _floats(g) for i, g in gate_sums.items()},
            saliency_sums=None if saliency_sums is None else {i: _floats(s) for i, s in saliency_sums.items()},
            **fields,
        )


def count_routing(
    model,
    input_ids: torch.Tensor,
    n_tokens: int,
    *,
    batch_size: int = 8,
    saliency: bool = True,
    on_batch: BatchCallback | None = None,
) -> RoutingSums:
    """The raw sums over the first n_tokens positions of the flattened rows, one batch of rows at a time."""
    layers = moe_layers(model)
    device = next(model.parameters()).device
    sums = _zeros(layers, n_tokens, saliency, device)
    seq_len = input_ids.shape[1]
    rows = math.ceil(n_tokens / seq_len)
    batches = math.ceil(rows / batch_size)
    was_training = model.training
    model.eval()
    try:
        with ExitStack() as stack, torch.no_grad():
            routing = stack.enter_context(RoutingRecorder(model))
            contributions = stack.enter_context(ContributionRecorder(model)) if saliency else None
            done = 0
            for batch in range(batches):
                chunk = input_ids[batch * batch_size : min(rows, (batch + 1) * batch_size)]
                model.model(input_ids=chunk.to(device), use_cache=False)  # the backbone: logits are not needed
                real = min(n_tokens - done, chunk.numel())
                sums.add(routing.pop(), contributions.pop() if contributions else None, real)
                done += real
                if on_batch is not None:
                    on_batch(BatchInfo(batch=batch + 1, batches=batches, tokens=done, total_tokens=n_tokens))
    finally:
        model.train(was_training)
    log.debug("profiled %d tokens in %d batches over %d MoE layers", n_tokens, batches, len(layers))
    return sums


def _zeros(layers: list[MoeLayer], tokens: int, saliency: bool, device) -> RoutingSums:
    def vectors(dtype):
        return {layer.index: torch.zeros(layer.num_experts, dtype=dtype, device=device) for layer in layers}

    return RoutingSums(
        tokens=tokens,
        counts=vectors(torch.int64),
        gate_sums=vectors(torch.float64),
        saliency_sums=vectors(torch.float64) if saliency else None,
    )


def _encode_until(records: Sequence[Record], tokenizer, tokens: int) -> tuple[list[Example], int]:
    """Examples of the first records that together reach `tokens` tokens, and how many records that took."""
    examples, have, used = [], 0, 0
    while used < len(records) and have < tokens:
        chunk = encode_records(records[used : used + _ENCODE_CHUNK], tokenizer)
        for example in chunk:
            examples.append(example)
            have += len(example.input_ids)
            used += 1
            if have >= tokens:
                break
    return examples, used


def _mean_where_routed(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """sums / counts, 0 for experts no token was routed to."""
    return torch.where(counts > 0, sums / counts.clamp(min=1).double(), torch.zeros_like(sums))


def _normalised(values: torch.Tensor) -> tuple[float, ...]:
    total = float(values.sum())
    if total <= 0:
        return tuple(0.0 for _ in values)
    return _floats(values.double() / total)


def _floats(values: torch.Tensor) -> tuple[float, ...]:
    return tuple(float(v) for v in values.tolist())
