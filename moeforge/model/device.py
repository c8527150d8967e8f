"""Where a model runs: `--device auto|cpu|cuda|cuda:N` turned into a torch device, and bf16 autocast where it pays.

`auto` is CUDA when available, else the CPU. Every command that loads a model takes the same
flag and calls `resolve_device` once; library code receives a `torch.device` and never guesses.
"""

import contextlib
import re

import torch

from moeforge.errors import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_PATTERN = re.compile(r"^(auto|cpu|cuda(?::(\d+))?)$")


def resolve_device(spec: str | torch.device | None = "auto", *, flag: str = "--device") -> torch.device:
    """The torch device SPEC names; ConfigError naming FLAG when it is malformed or not present here."""
    if isinstance(spec, torch.device):
        return spec
    text = (spec or "auto").strip().lower()
    match = _PATTERN.match(text)
    if match is None:
        raise ConfigError(f"{flag} {spec!r}: expected {DEVICE_CHOICES}.")
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{flag} {spec}: CUDA is not available on this machine (torch {torch.__version__}). "
                          "Pass --device cpu, or --device auto to use CUDA only where it exists.")
    index = int(match.group(2)) if match.group(2) is not None else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"{flag} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"numbered 0..{torch.cuda.device_count() - 1}.")
    return torch.device("cuda", index)


def supports_bf16(device: torch.device) -> bool:
    """True where bf16 autocast is fast and exact enough to use by default: CUDA with bf16 support."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device):
    """bf16 autocast on a device that supports it, else nothing (CPU results stay bit-identical to today's)."""
    if supports_bf16(device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
