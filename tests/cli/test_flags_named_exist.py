"""Every `--flag` that a message, hint or help text of moeforge names is an option some command really has."""

import ast
import re
from pathlib import Path

import typer

from moeforge.cli.main import app

PACKAGE = Path(__file__).resolve().parents[2] / "moeforge"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
PIP = {"--no-index", "--find-links", "--no-deps", "--no-build-isolation", "--quiet", "--only-binary", "--dest", "--constraint"}  # pip's own, which a bundle's wheelhouse runs


def _options(command) -> set[str]:
    names = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for sub in getattr(command, "commands", {}).values():
        names |= _options(sub)
    return names


def _strings(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_every_flag_named_in_the_code_exists():
    options = _options(typer.main.get_command(app)) | {"--help"} | PIP
    unknown = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, text in _strings(ast.parse(path.read_text())):
            for flag in FLAG.findall(text):
                if flag not in options:
                    unknown.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {flag}")
    assert not unknown, "messages name flags no command has:\n" + "\n".join(unknown)
