"""JSON for per-layer files: one line per field, and one line per layer inside per-layer maps.

Profiles and expert configs hold a vector or a list of ids per layer; written this way they stay
readable and diff layer by layer, unlike one value per line (indent) or one long line.
"""

import json
from pathlib import Path


def write_layer_json(path: str | Path, data: dict) -> Path:
    """Write `data` (JSON-ready: str keys or int keys, lists, scalars) to path; returns the path."""
    lines = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            inner = ",\n".join(f"  {json.dumps(str(k))}: {json.dumps(v)}" for k, v in value.items())
            lines.append(f" {json.dumps(key)}: {{\n{inner}\n }}")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    return path
