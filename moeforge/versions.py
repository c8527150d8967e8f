"""The software versions every artifact records beside its config (STYLE.md §3)."""

import platform


def software_versions() -> dict[str, str]:
    """moeforge, torch, transformers and Python versions, as written into run and report files."""
    import torch
    import transformers

    import moeforge

    return {
        "moeforge": moeforge.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
