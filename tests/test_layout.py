"""The package's shape: imports point one way, down the stages (data -> train -> infer -> eval -> demo, app -> cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import iadr1

PACKAGE = Path(iadr1.__file__).parent
# Lower rank = earlier stage. A module may import its own rank or lower, never a later stage (shared leaves: 0).
# `config` reads files through `data.io`, so it sits on the data layer.
RANK = {"data": 1, "config": 1, "train": 2, "infer": 3, "eval": 4, "demo": 5, "app": 5, "cli": 6, "__main__": 7}


def _rank(module: str) -> int:
    return RANK.get(module.split(".")[1] if "." in module else "", 0)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("iadr1"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("iadr1")}
    return out


def test_imports_point_down_the_stages():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("iadr1", *path.relative_to(PACKAGE).with_suffix("").parts))
        for imported in _imports(path):
            if imported != "iadr1" and _rank(imported) > _rank(module):
                wrong.append(f"{module} imports {imported}")
    assert not wrong, wrong


def test_every_visible_option_of_every_command_has_help():
    """Help texts live on the config models and the commands read them: none may come out empty."""
    import click
    import typer

    from iadr1.cli import app

    def walk(cmd: click.Command, path: str):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    empty = [
        f"{path} {p.opts[0]}"
        for path, cmd in walk(typer.main.get_command(app), "iadr1")
        for p in cmd.params
        if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip() and p.opts[0] != "--help"
    ]
    assert not empty, empty
