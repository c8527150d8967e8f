"""A base model's fingerprint: sha256 over every weight, so profiles, slices and deltas name their base.

The digest covers each state-dict entry's name, dtype, shape and bytes in sorted name order,
so it changes if any weight changes and does not depend on how the checkpoint was sharded.
"""

import hashlib

import torch


def model_fingerprint(model) -> str:
    """Hex sha256 of every tensor of `model` (tied weights once)."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
