"""Peak training memory, measured the same way for ESFT, full fine-tuning and LoRA.

On CUDA it is `torch.cuda.max_memory_allocated` over the run (reset at its start): every byte
the allocator handed out, weights included.

On CPU the process's peak RSS is too coarse (allocator caching, the Python heap, whatever ran
before), so the peak is *counted* from the tensors training must hold at once:

    weights (every parameter and buffer of the model, each storage once)
  + gradients (one per trainable element, in the parameter's dtype)
  + optimizer state (every tensor AdamW keeps: exp_avg, exp_avg_sq, step)
  + activations (the largest micro-batch's tensors saved for backward, each storage once,
    storages that are model weights excluded), counted with `saved_tensors_hooks`.

Both numbers include the frozen weights, which are the same for every method; the rest scales
with what is trained: ESFT's gradients and AdamW state cover the selected experts only.
"""

from contextlib import contextmanager

import torch
from torch import nn


class PeakMemory:
    """Tracks the peak bytes of one training run on `device`."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], device: torch.device):
        self.device = device
        self.method = "cuda_max_memory_allocated" if device.type == "cuda" else "counted_tensors"
        self._params = params
        self._activation_bytes = 0
        self._weights = _storages(list(model.parameters()) + list(model.buffers()) + list(params))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    @contextmanager
    def micro_batch(self):
        """Wrap one micro-batch's forward and backward; counts its saved activations on CPU."""
        if self.device.type == "cuda":
            yield
            return
        weights = self._weights
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in weights:
                saved[ptr] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
        self._activation_bytes = max(self._activation_bytes, sum(saved.values()))

    def peak_bytes(self, optimizer: torch.optim.Optimizer) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        weights = sum(self._weights.values())
        grads = sum(p.numel() * p.element_size() for p in self._params)
        state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        return weights + grads + sum(t.numel() * t.element_size() for t in state) + self._activation_bytes


def _storages(tensors: list[torch.Tensor]) -> dict[int, int]:
    """data pointer → bytes, each storage once (tied and aliased tensors count once)."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
