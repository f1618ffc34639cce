"""More than one process: the CLI under `accelerate launch`, `torchrun` and the `deepspeed` launcher, on CPU (gloo).

Each rank records a fingerprint of the weights it holds when training ends; data parallelism is correct when both
ranks hold the same trained weights and each saw half the data. The DeepSpeed runs are opt-in (slow tier): the
first one JIT-compiles a small op (about 50 s, g++ and ninja needed).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import moved, write_dataset

pytestmark = pytest.mark.train

# Runs the real CLI in each process, with one extra callback that writes what this rank holds at the end.
WORKER = """
import hashlib, json, os, sys
from pathlib import Path

from transformers import TrainerCallback

import iadr1.train.sft as sft

out = Path(sys.argv[sys.argv.index("--output-dir") + 1])


class Fingerprint(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        rank = os.environ.get("RANK", "0")
        info = {"sha256": digest.hexdigest(), "world_size": args.world_size, "epoch": state.epoch}
        (out / f"rank{rank}.json").write_text(json.dumps(info))


run_sft = sft.run_sft
sft.run_sft = lambda cfg, callbacks=(): run_sft(cfg, callbacks=[Fingerprint(), *callbacks])

from iadr1.cli import main

main(sys.argv[1:])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], timeout: int = 600) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd[:6])}... failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _sft_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    args = ["sft", "--model", str(model), "--dataset", str(data / "sft.jsonl"), "--output-dir", str(out)]
    return [
        *args,
        "--max-steps",
        "2",
        "--lr",
        "1e-3",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--set",
        "warmup_steps=0",
        *extra,
    ]


def _ranks(out: Path) -> list[dict]:
    found = sorted(out.glob("rank*.json"))
    assert [p.name for p in found] == ["rank0.json", "rank1.json"], "both ranks must have trained"
    return [json.loads(p.read_text()) for p in found]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_factory):
    root = tmp_path_factory.mktemp("dist")
    (root / "worker.py").write_text(WORKER)
    return {"model": tiny_model_factory("qwen2_vl"), "data": write_dataset(root / "data", n=8), "root": root}


def test_accelerate_launch_two_cpu_processes_hold_the_same_weights(setup, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` runs two gloo processes on a machine without CUDA
    (`--cpu` would run one: accelerate 1.15 ignores --num_processes with --cpu unless an MPI hostfile is given)."""
    out = tmp_path / "out"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(_free_port()), str(setup["root"] / "worker.py")]
    _run([*launch, *_sft_args(setup["model"], setup["data"], out)])

    r0, r1 = _ranks(out)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["sha256"] == r1["sha256"]
    # 8 records, 2 per process per step, 2 processes: 2 steps are one epoch (alone, they would be half of one).
    assert r0["epoch"] == pytest.approx(1.0)
    changed, _ = moved(setup["model"], out)
    assert changed


@pytest.mark.slow
def test_torchrun_runs_the_cli_module(setup, tmp_path):
    out = tmp_path / "out"
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
    ]
    _run([*launch, "-m", "iadr1", *_sft_args(setup["model"], setup["data"], out)])
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "log_history.json").read_text())[-1]["epoch"] == pytest.approx(1.0)


def _deepspeed_launcher() -> str:
    pytest.importorskip("deepspeed")
    exe = Path(sys.executable).parent / "deepspeed"
    if not exe.is_file():
        pytest.skip("the deepspeed launcher is not installed beside this Python")
    return str(exe)


@pytest.mark.slow
@pytest.mark.deepspeed
def test_deepspeed_launcher_zero2_on_cpu(setup, tmp_path):
    """The `deepspeed` launcher inserts --local_rank=N before the subcommand; ZeRO-2 trains on CPU."""
    out = tmp_path / "out"
    launch = [
        _deepspeed_launcher(),
        "--num_gpus",
        "2",
        "--master_port",
        str(_free_port()),
        str(setup["root"] / "worker.py"),
    ]
    _run([*launch, *_sft_args(setup["model"], setup["data"], out, "--deepspeed", "zero2")])
    r0, r1 = _ranks(out)
    assert r0["world_size"] == 2 and r0["sha256"] == r1["sha256"]
    changed, _ = moved(setup["model"], out)
    assert changed


@pytest.mark.slow
@pytest.mark.deepspeed
def test_deepspeed_zero3_saves_the_full_model(setup, tmp_path):
    """Under ZeRO-3 each rank holds a shard; the saved folder must still hold every weight at full size."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    launch = [
        _deepspeed_launcher(),
        "--num_gpus",
        "2",
        "--master_port",
        str(_free_port()),
        str(setup["root"] / "worker.py"),
    ]
    _run([*launch, *_sft_args(setup["model"], setup["data"], out, "--deepspeed", "zero3")])
    base, trained = load_file(setup["model"] / "model.safetensors"), load_file(out / "model.safetensors")
    assert {k: v.shape for k, v in base.items()} == {k: v.shape for k, v in trained.items()}
    changed, _ = moved(setup["model"], out)
    assert changed
