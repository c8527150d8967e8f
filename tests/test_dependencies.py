"""Every third-party module moeforge imports is a declared, exactly pinned dependency; optional parts are extras
with a clear error when missing."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

from moeforge.errors import ConfigError
from moeforge.extras import EXTRAS
from moeforge.store.open import open_store

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imported_top_modules(package: Path) -> set[str]:
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"moeforge"}


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for line in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?(==.+)?", line)
        assert match, f"unreadable requirement {line!r}"
        pins[match.group(1).lower().replace("_", "-")] = match.group(3) or ""
    return pins


def test_every_imported_distribution_is_declared_and_pinned():
    declared = _pins(PYPROJECT["dependencies"])
    for extra, requirements in PYPROJECT["optional-dependencies"].items():
        declared.update({k: v for k, v in _pins(requirements).items() if k != "moeforge"})
    providers = importlib.metadata.packages_distributions()
    missing, floating = [], []
    for module in sorted(_imported_top_modules(ROOT / "moeforge")):
        for dist in providers.get(module, [module]):
            key = dist.lower().replace("_", "-")
            if key not in declared:
                missing.append(f"{module} ({dist})")
            elif not declared[key]:
                floating.append(dist)
    assert not missing, f"imported by moeforge but not declared in pyproject.toml: {missing}"
    assert not floating, f"declared without an exact pin: {floating}"


def test_extras_match_pyproject():
    extras = PYPROJECT["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        declared = _pins(extras[extra])
        for module in modules:
            dists = importlib.metadata.packages_distributions().get(module, [module])
            assert any(d.lower() in declared for d in dists), f"{module} not in the '{extra}' extra"
    assert not {"boto3", "peft"} & set(_pins(PYPROJECT["dependencies"])), "heavy optional parts must be extras"


def test_s3_store_without_its_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # what an install without the extra looks like to import
    with pytest.raises(ConfigError, match=r"pip install 'moeforge\[s3\]'"):
        open_store("s3://bucket/prefix")
