"""Offload mode: frozen routed experts stay in host memory; only the experts a batch routes to reach the device.

DESIGN.md "Miners' memory". `OffloadedExperts` replaces a MoE layer's fused experts module. It
keeps the layer's `gate_up_proj [E, 2I, H]` and `down_proj [E, H, I]` in host memory (pinned
when CUDA is present) as plain attributes, so `model.to(device)` moves everything else and
leaves them where they are. On each call:

1. the distinct experts the router chose, `ids` (sorted), are copied to the device as one
   working set `[U, 2I, H]` / `[U, H, I]`;
2. the routing is renumbered onto the working set (`ids[j]` becomes `j`, order kept);
3. the model class's own experts forward (eager loop, `grouped_mm`, ... as the config's
   `_experts_implementation` says) runs on a shallow copy of the original module that holds the
   working set as its weights.

Routing is the full model's, untouched, and the renumbering keeps the experts' order, so every
expert sees the same tokens in the same order as in the full model: on CPU the logits are the
full model's bit for bit (the test asserts it). Autograd would keep every layer's working set
alive until the backward pass; instead each saved view of a working set is packed as the ids it
covers and fetched again from host memory when the backward pass needs it
(`saved_tensors_hooks`). What a layer fetched is freed when it returns, and the backward pass
fetches one weight of one layer at a time, so the device holds at most one layer's working set
(`WorkingSetMeter` counts it; a test asserts it). With gradient checkpointing the recomputed
forward fetches its experts again in the same way.

Copies from pinned memory are issued non-blocking, in order with the compute that needs them.
The next layer's routing is not known while this one computes (its router needs this layer's
output), so with `prefetch` the next layer's working set is *guessed*: the experts it used on its
previous call are fetched while this layer computes (on a side CUDA stream; on CPU at once, which
only exercises the logic), and used when they cover what its router then chooses (a hit), else
dropped and the chosen experts fetched (a miss; `Prefetcher` counts both). The answer is the same
either way. Prefetching holds two layers' working sets at once instead of one; it runs in the
forward pass only (a checkpointed layer recomputed in the backward pass, whose order is reversed,
fetches nothing ahead).
"""

import weakref

import torch
from torch import nn

from moeforge.errors import ModelError
from moeforge.model.expert_call import call_with, weightless


class WorkingSetMeter:
    """Bytes of offloaded expert weights alive on the device now, and the most ever alive at once (all layers together)."""

    def __init__(self):
        self.live = 0
        self.peak = 0

    def track(self, t: torch.Tensor) -> torch.Tensor:
        n = t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(t, self._freed, n)
        return t

    def _freed(self, n: int) -> None:
        self.live -= n


class Prefetcher:
    """The one pending guess of the next layer's working set, shared by a model's offloaded layers."""

    def __init__(self):
        self.pending = None  # (layer, ids, (gate_up, down), CUDA event or None)
        self.stream = None  # the side CUDA stream the guesses are copied on
        self.hits = 0
        self.misses = 0

    def start(self, layer: "OffloadedExperts", ids: torch.Tensor, device: torch.device) -> None:
        self.pending = None  # one guess at a time: a stale one is dropped
        if device.type != "cuda":
            self.pending = (layer, ids, layer._fetch(ids, device), None)
            return
        if self.stream is None:
            self.stream = torch.cuda.Stream(device)
        with torch.cuda.stream(self.stream):
            weights = layer._fetch(ids, device)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.pending = (layer, ids, weights, event)

    def take(self, layer: "OffloadedExperts", needed: torch.Tensor, device: torch.device):
        """(ids, weights) guessed for `layer` when they cover `needed`, else None (the guess is dropped)."""
        if self.pending is None or self.pending[0] is not layer:
            return None
        _, ids, weights, event = self.pending
        self.pending = None
        if not set(needed.tolist()) <= set(ids.tolist()):
            self.misses += 1
            return None
        if event is not None:
            stream = torch.cuda.current_stream(device)
            stream.wait_event(event)
            for w in weights:
                w.record_stream(stream)  # allocated on the side stream, used on this one
        self.hits += 1
        return ids, weights


class OffloadedExperts(nn.Module):
    """A fused experts module whose frozen weights live in host memory (see the module docstring)."""

    def __init__(self, experts: nn.Module, *, pin: bool | None = None, meter: WorkingSetMeter | None = None,
                 prefetcher: Prefetcher | None = None):
        super().__init__()
        self.__dict__["meter"] = meter or WorkingSetMeter()  # shared by the model's layers (offload_experts)
        self.__dict__["prefetcher"] = prefetcher  # None: nothing fetched ahead
        self.__dict__["next_layer"] = None  # the offloaded layer after this one (offload_experts links them)
        self._last_ids = None  # the experts this layer's last call chose: the next guess for it
        pin = torch.cuda.is_available() if pin is None else pin
        self.num_experts = experts.num_experts
        self.act_fn = experts.act_fn
        host = [experts.gate_up_proj.detach(), experts.down_proj.detach()]
        if not host[0].is_meta:  # a meta model (a memory plan) stays on the meta device
            host = [t.to("cpu") for t in host]
            if pin:
                host = [t.pin_memory() for t in host]
        # plain attributes, not buffers: .to(device) and state_dict leave them alone
        self.__dict__["_host"] = tuple(host)
        self.__dict__["template"] = weightless(experts)  # the class's forward and flags, without its weights
        self.fetched_bytes = 0  # expert weights brought to the device so far (forward and backward), for the record
        self.largest_fetch_bytes = 0  # the largest working set of one call

    @property
    def gate_up_proj(self) -> torch.Tensor:
        """All experts' `[E, 2I, H]` weights, in host memory (what `read_expert` indexes)."""
        return self._host[0]

    @property
    def down_proj(self) -> torch.Tensor:
        return self._host[1]

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        device = hidden_states.device
        ids = torch.unique(top_k_index).cpu()  # sorted
        if len(ids) and (int(ids[0]) < 0 or int(ids[-1]) >= self.num_experts):
            raise ModelError(f"routed to expert {int(ids[-1]) if int(ids[-1]) >= self.num_experts else int(ids[0])}, "
                             f"outside 0..{self.num_experts - 1}")
        guessed = self.prefetcher.take(self, ids, device) if self.prefetcher is not None else None
        needed = ids
        if guessed is not None:
            ids, (gate_up, down) = guessed  # a superset: the extra experts get no token
        else:
            gate_up, down = self._fetch(ids, device)
        self._guess_next(device)
        self._last_ids = needed
        local = torch.full((self.num_experts,), -1, dtype=top_k_index.dtype)
        local[ids] = torch.arange(len(ids), dtype=top_k_index.dtype)
        buffers = {w.untyped_storage().data_ptr(): (i, ids) for i, w in enumerate((gate_up, down))}
        with torch.autograd.graph.saved_tensors_hooks(lambda t: self._pack(t, buffers), self._unpack):
            return call_with(self.template, gate_up, down, hidden_states, local.to(device)[top_k_index], top_k_weights)

    def _guess_next(self, device: torch.device) -> None:
        """Start fetching the next layer's previous experts; not while the backward pass recomputes a layer."""
        later = self.next_layer
        if self.prefetcher is None or later is None or later._last_ids is None or _in_backward():
            return
        self.prefetcher.start(later, later._last_ids, device)

    def _fetch(self, ids: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The experts `ids` of both weights, on `device`."""
        out = tuple(self.meter.track(_gather(host, ids, device)) for host in self._host)
        size = sum(t.numel() * t.element_size() for t in out)
        self.fetched_bytes += size
        self.largest_fetch_bytes = max(self.largest_fetch_bytes, size)
        return out

    def _pack(self, t: torch.Tensor, buffers: dict[int, tuple[int, torch.Tensor]]):
        """A view of a working set → (which weight, the ids it covers, its geometry); anything else as is."""
        found = buffers.get(t.untyped_storage().data_ptr()) if t.device.type != "meta" else None
        if found is None:
            return t
        which, ids = found
        per_expert = self._host[which][0].numel()
        first, extent = divmod(t.storage_offset(), per_expert)[0], _extent(t)
        last = (t.storage_offset() + extent - 1) // per_expert
        offset = t.storage_offset() - first * per_expert
        return _Refetch(which, ids[first:last + 1], tuple(t.shape), tuple(t.stride()), offset, t.device)

    def _unpack(self, packed):
        if not isinstance(packed, _Refetch):
            return packed
        base = self.meter.track(_gather(self._host[packed.which], packed.ids, packed.device))
        self.fetched_bytes += base.numel() * base.element_size()
        return base.as_strided(packed.shape, packed.stride, packed.offset)


class _Refetch:
    """A saved working-set view, to fetch again from host memory in the backward pass."""

    __slots__ = ("which", "ids", "shape", "stride", "offset", "device")

    def __init__(self, which, ids, shape, stride, offset, device):
        self.which, self.ids, self.shape, self.stride, self.offset, self.device = which, ids, shape, stride, offset, device


def _in_backward() -> bool:
    """Whether autograd's engine is running this code (a checkpointed layer recomputed in the backward pass)."""
    return torch._C._current_graph_task_id() != -1


def _gather(host: torch.Tensor, ids: torch.Tensor, device: torch.device) -> torch.Tensor:
    """host[ids] on `device`: one contiguous block, copied expert by expert (non-blocking from pinned memory)."""
    if device.type == "cpu":
        return host.index_select(0, ids)
    out = torch.empty((len(ids), *host.shape[1:]), dtype=host.dtype, device=device)
    for j, e in enumerate(ids.tolist()):
        out[j].copy_(host[e], non_blocking=host.is_pinned())
    return out


def _extent(t: torch.Tensor) -> int:
    """Elements of storage a strided view spans, from its offset."""
    if t.numel() == 0:
        return 1
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))


def offload_experts(model, *, pin: bool | None = None, prefetch: bool = False) -> WorkingSetMeter:
    """Keep every MoE layer's routed experts in host memory, in place (fused-layout families); → the layers' shared meter.

    `prefetch`: guess each next layer's working set while a layer computes (module docstring)."""
    from moeforge.model.families import family_of, moe_layers

    family = family_of(model.config)
    if family.layout != "fused":
        raise ModelError(f"offload mode supports fused-layout families; {model.config.model_type} is {family.layout}.")
    meter = next((l.experts.meter for l in moe_layers(model) if isinstance(l.experts, OffloadedExperts)), WorkingSetMeter())
    prefetcher = Prefetcher() if prefetch else None
    offloaded = []
    for layer in moe_layers(model):
        block = getattr(model.model.layers[layer.index], family.block)
        if not isinstance(block.experts, OffloadedExperts):
            block.experts = OffloadedExperts(layer.experts, pin=pin, meter=meter)
        block.experts.__dict__["prefetcher"] = prefetcher
        offloaded.append(block.experts)
    for this, later in zip(offloaded, [*offloaded[1:], None]):
        this.__dict__["next_layer"] = later
    return meter
