"""`iadr1 infer` runs that refuse to mix, exit codes, and trivial errors reported before torch is imported.

Most runs here use a scripted backend (no model) and a fake model folder (a config.json and an empty weight file):
what is tested is the run's bookkeeping, not a model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from infer_helpers import make_bench

from iadr1.errors import ConfigError, DataError
from iadr1.infer.base import Backend, Result
from iadr1.infer.runner import check_inputs, load_config, run_inference


class Oracle(Backend):
    """Answers from the path (defect -> yes); counts the requests it saw."""

    name = "oracle"

    def __init__(self, fail_after: int | None = None) -> None:
        self.seen = 0
        self.fail_after = fail_after

    def generate(self, requests):
        for r in requests:
            if self.fail_after is not None and self.seen >= self.fail_after:
                raise RuntimeError("killed")  # what a crash mid-run looks like to the runner
            self.seen += 1
            yield r, Result(raw=f"<answer>{'Yes' if '/defect/' in r.key else 'No'}</answer>", latency_s=0.01)


def fake_model(folder: Path, mpe: int = 4096, weights: int = 16) -> Path:
    """A folder that passes for a checkpoint without loading: config.json and a weight file of `weights` bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "qwen2_vl", "text_config": {"max_position_embeddings": mpe}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\0" * weights)
    return folder


@pytest.fixture
def bench(tmp_path):
    test_file, root, keys = make_bench(tmp_path, n=6, corrupt=False, missing=False)
    return {"test_file": test_file, "image_root": root, "model": str(fake_model(tmp_path / "ckpt"))}, keys


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# --- runs that refuse to mix -----------------------------------------------------------------------------------------
def test_manifest_is_written_at_start_and_completed_at_the_end(bench, tmp_path):
    base, keys = bench
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="killed"):
        run_inference(**base, out=out, engine=Oracle(fail_after=2))
    manifest = json.loads((out / "predictions.run.json").read_text())  # a killed run leaves its settings behind
    assert manifest["summary"] is None and manifest["finished_at"] is None
    settings = manifest["settings"]
    assert settings["model"] == str(Path(base["model"]).resolve())
    assert settings["model_weights"] == {"model.safetensors": 16} and len(settings["model_config_sha256"]) == 64
    assert len(settings["test_file_sha256"]) == 64 and settings["max_new_tokens"] == 512
    assert manifest["iadr1"] and manifest["config"]["batch_size"] == 8
    with pytest.raises(ConfigError, match="temperature 0.0 here, 0.7 in this run"):  # so it is protected
        run_inference(**base, out=out, temperature=0.7, engine=Oracle())

    s = run_inference(**base, out=out, engine=Oracle())  # same settings: resumes
    assert (
        s.skipped == 2 and s.written == 4 and s.notes == [f"resuming {s.predictions}: 2 of 6 images already answered"]
    )
    manifest = json.loads(s.manifest.read_text())
    assert manifest["summary"]["written"] == 4 and manifest["finished_at"] and manifest["settings"] == settings


def _edit_test_file(base: dict, tmp_path: Path) -> dict:
    data = json.loads(Path(base["test_file"]).read_text())
    first = next(iter(data.values()))
    first["conversation"][0]["Answer"] = "A" if first["conversation"][0]["Answer"] == "B" else "B"
    (tmp_path / "edited.json").write_text(json.dumps(data))
    return {"test_file": tmp_path / "edited.json"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b, t: {"temperature": 0.5}, "temperature 0.0 here, 0.5 in this run"),
        (lambda b, t: {"max_new_tokens": 64}, "max_new_tokens 512 here, 64 in this run"),
        (lambda b, t: {"max_pixels": 4096}, "max_pixels None here, 4096 in this run"),
        (lambda b, t: {"prompt_style": "baseline"}, "prompt_style 'iadr1' here, 'baseline' in this run"),
        (lambda b, t: {"grammar_prompt": True}, "grammar_prompt False here, True in this run"),
        (lambda b, t: {"shots": 1}, "shots 0 here, 1 in this run"),
        (lambda b, t: {"dtype": "bf16"}, "dtype 'auto' here, 'bf16' in this run"),
        (lambda b, t: {"backend": "vllm"}, "backend 'transformers' here, 'vllm' in this run"),
        (lambda b, t: {"model": str(fake_model(t / "other"))}, "model '"),
        (lambda b, t: {"model": str(fake_model(Path(b["model"]), mpe=2048))}, "the model's config.json differs"),
        (lambda b, t: {"model": str(fake_model(Path(b["model"]), weights=32))}, "the model's weight files differ"),
        (_edit_test_file, "the test file's content differs"),
    ],
)
def test_a_rerun_with_other_answer_changing_settings_is_refused(bench, tmp_path, change, message):
    base, _ = bench
    out = tmp_path / "o"
    first = run_inference(**base, out=out, limit=2, engine=Oracle())
    before = first.predictions.read_text()
    with pytest.raises(ConfigError) as e:
        run_inference(**{**base, **change(base, tmp_path)}, out=out, engine=Oracle())
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).endswith("pass --overwrite to start over, or use another --out folder")
    assert first.predictions.read_text() == before  # nothing was touched


def test_sampling_settings_are_compared_only_when_sampling(bench, tmp_path):
    base, _ = bench
    kw = {**base, "out": tmp_path / "o"}
    run_inference(**kw, limit=1, engine=Oracle())
    run_inference(**kw, limit=2, top_p=0.5, seed=3, templates="similar", engine=Oracle())  # greedy, 0-shot: moot
    run_inference(**{**kw, "out": tmp_path / "s"}, limit=1, temperature=0.7, top_p=0.9, engine=Oracle())
    with pytest.raises(ConfigError, match="top_p 0.9 here, 0.5 in this run"):
        run_inference(**{**kw, "out": tmp_path / "s"}, temperature=0.7, top_p=0.5, engine=Oracle())
    run_inference(**{**kw, "out": tmp_path / "k"}, limit=1, shots=1, engine=Oracle())
    with pytest.raises(ConfigError, match="template_kind 'random' here, 'similar' in this run"):
        run_inference(**{**kw, "out": tmp_path / "k"}, shots=1, templates="similar", engine=Oracle())


def test_settings_that_do_not_change_answers_may_change(bench, tmp_path):
    base, keys = bench
    kw = {**base, "out": tmp_path / "o"}
    run_inference(**kw, limit=2, batch_size=1, device="cpu", engine=Oracle())
    s = run_inference(
        **kw, limit=4, batch_size=32, concurrency=2, device="cuda", max_model_len=1024, gpu_memory_utilization=0.5,
        queue_size=4, logprobs=False, engine=Oracle(),
    )  # fmt: skip
    assert s.skipped == 2 and s.written == 2
    # Shards of the same settings share the folder with the unsharded file.
    for i in range(2):
        run_inference(**kw, shard=i, num_shards=2, engine=Oracle())
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "predictions.jsonl", "predictions.run.json", "predictions.shard0of2.jsonl", "predictions.shard0of2.run.json",
        "predictions.shard1of2.jsonl", "predictions.shard1of2.run.json",
    ]  # fmt: skip


def test_a_sibling_shard_of_other_settings_is_refused_too(bench, tmp_path):
    base, _ = bench
    kw = {**base, "out": tmp_path / "o", "num_shards": 2}
    run_inference(**kw, shard=0, engine=Oracle())
    with pytest.raises(ConfigError, match=r"predictions.shard0of2.jsonl holds predictions made with other settings"):
        run_inference(**kw, shard=1, max_new_tokens=32, engine=Oracle())


def test_overwrite_starts_over(bench, tmp_path):
    base, keys = bench
    out = tmp_path / "o"
    kw = {**base, "out": out}
    run_inference(**kw, limit=2, engine=Oracle())
    for i in range(2):
        run_inference(**kw, shard=i, num_shards=2, engine=Oracle())

    notes: list[str] = []
    engine = Oracle()
    s = run_inference(**kw, max_new_tokens=32, overwrite=True, engine=engine, on_message=notes.append)
    assert engine.seen == 6 and s.skipped == 0 and len(_lines(s.predictions)) == 6
    assert notes == [
        "--overwrite: removed predictions.jsonl, predictions.run.json, predictions.shard0of2.jsonl, "
        "predictions.shard0of2.run.json, predictions.shard1of2.jsonl, predictions.shard1of2.run.json"
    ]  # the shards were made with the old settings: nothing is left to mix
    assert json.loads(s.manifest.read_text())["settings"]["max_new_tokens"] == 32

    # Same settings and --overwrite: this file starts over; a sibling shard of the same settings stays.
    run_inference(**kw, max_new_tokens=32, shard=0, num_shards=2, engine=Oracle())
    engine = Oracle()
    run_inference(**kw, max_new_tokens=32, overwrite=True, engine=engine)
    assert engine.seen == 6 and (out / "predictions.shard0of2.jsonl").exists()


def test_predictions_without_a_manifest_are_refused(bench, tmp_path):
    base, _ = bench
    s = run_inference(**base, out=tmp_path / "o", limit=2, engine=Oracle())
    s.manifest.unlink()  # what an older iadr1 killed mid-run left behind
    with pytest.raises(ConfigError, match=r"no predictions.run.json says how they were made"):
        run_inference(**base, out=tmp_path / "o", engine=Oracle())
    s.manifest.write_text('{"iadr1": "0.1.0", "config": {}, "summary": {}}')  # the manifest of an older iadr1
    with pytest.raises(ConfigError, match=r"does not record the run's settings"):
        run_inference(**base, out=tmp_path / "o", engine=Oracle())


# --- exit codes ------------------------------------------------------------------------------------------------------
def _cli(*args: str, cwd: Path | None = None, importtime: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200"}
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *flags, "-m", "iadr1", "infer", *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=cwd,
    )  # fmt: skip


def _messages(stderr: str) -> list[str]:
    """stderr without the `-X importtime` lines."""
    return [x for x in stderr.splitlines() if x.strip() and not x.startswith("import time:")]


def _args(base: dict, out: Path, *extra: str) -> list[str]:
    return [
        "--model", base["model"], "--test-file", str(base["test_file"]), "--image-root", str(base["image_root"]),
        "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


def test_cli_exits_non_zero_when_every_image_failed(tmp_path):
    test_file, root, keys = make_bench(tmp_path, n=2, corrupt=False, missing=False)
    for key in keys:
        (root / key).unlink()
    base = {"test_file": test_file, "image_root": root, "model": str(fake_model(tmp_path / "ckpt"))}
    r = _cli(*_args(base, tmp_path / "o"))
    assert r.returncode == 1, r.stderr
    assert _messages(r.stderr)[-1] == (
        f"error: all 2 images this run tried failed (first: {keys[0]}: query image: missing file); "
        f"see the error field in {tmp_path / 'o' / 'predictions.jsonl'}"
    )
    assert len(_lines(tmp_path / "o" / "predictions.jsonl")) == 2  # recorded all the same


def test_cli_exits_non_zero_on_an_empty_test_file(tmp_path):
    base = {"test_file": tmp_path / "t.json", "image_root": tmp_path, "model": str(fake_model(tmp_path / "ckpt"))}
    base["test_file"].write_text("{}")
    r = _cli(*_args(base, tmp_path / "o"))
    assert r.returncode == 1 and _messages(r.stderr) == [f"error: {base['test_file']}: the test file holds no images"]
    assert not (tmp_path / "o").exists()


def test_cli_rerun_with_everything_answered_exits_zero_and_says_so(bench, tmp_path):
    base, keys = bench
    out = tmp_path / "o"
    run_inference(**base, out=out, engine=Oracle())
    r = _cli(*_args(base, out))  # a fake model: only a run that builds no engine can pass
    assert r.returncode == 0, r.stderr
    expected = f"nothing to do: all 6 images are already answered in {out / 'predictions.jsonl'} (--overwrite"
    assert any(line.startswith(expected) for line in _messages(r.stderr))


# --- fail fast -------------------------------------------------------------------------------------------------------
def _tree(tmp_path: Path) -> dict[str, Path]:
    test_file, root, _ = make_bench(tmp_path, n=2, corrupt=False, missing=False)
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    no_weights = tmp_path / "no_weights"
    fake_model(no_weights).joinpath("model.safetensors").unlink()
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "folder.json").mkdir()
    return {
        "model": fake_model(tmp_path / "ckpt"), "test": test_file, "root": root, "not_a_model": not_a_model,
        "no_weights": no_weights, "bad": tmp_path / "bad.json", "folder": tmp_path / "folder.json",
    }  # fmt: skip


FAST_ERRORS = [
    ({"--model": "{tmp}/nope"}, "error: --model {tmp}/nope: model folder not found"),
    ({"--model": "{not_a_model}"}, "error: {not_a_model}: no config.json (expected a local model folder"),
    ({"--model": "{no_weights}"}, "error: --model {no_weights}: no weight files (*.safetensors"),
    ({"--model": "{test}"}, "error: --model {test}: is a file, not a model folder"),
    ({"--test-file": "{tmp}/nope.json"}, "error: {tmp}/nope.json: file not found"),
    ({"--test-file": "{bad}"}, "error: {bad}: malformed JSON at line 1"),
    ({"--test-file": "{folder}"}, "error: {folder}: is a folder, expected a JSON file"),
    ({"--image-root": "{tmp}/nope"}, "error: --image-root {tmp}/nope: folder not found"),
    ({"--image-root": "{test}"}, "error: --image-root {test}: not a folder"),
    ({"--out": "{test}"}, "error: --out {test}: is a file, not a folder"),
    ({"--temperature": "-1"}, "error: option 'temperature': Input should be greater than or equal to 0"),
    ({"--dtype": "fp8"}, "error: option 'dtype': Input should be 'auto', 'bf16'"),
    ({"--shots": "12"}, "error: option 'shots': Input should be less than or equal to 9"),
    ({"--backend": "tgi"}, "error: option 'backend': Input should be 'vllm', 'transformers' or 'openai'"),
    ({"--backend": "vllm", "--max-model-len": "10"}, "error: option 'max_model_len': Input should be greater"),
]


@pytest.mark.parametrize(("change", "expected"), FAST_ERRORS, ids=[e[1][7:40] for e in FAST_ERRORS])
def test_trivial_errors_are_one_line_before_torch_is_imported(tmp_path, change, expected):
    paths = {k: str(v) for k, v in _tree(tmp_path).items()} | {"tmp": str(tmp_path)}
    options = {"--model": "{model}", "--test-file": "{test}", "--image-root": "{root}", "--out": "{tmp}/o"}
    options |= change
    args = [x for k, v in options.items() for x in (k, v.format(**paths))]
    r = _cli(*args, importtime=True)
    assert r.returncode == 1
    assert len(_messages(r.stderr)) == 1, r.stderr
    assert _messages(r.stderr)[0].startswith(expected.format(**paths)), r.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "pydantic" in imported  # the probe works: -X importtime lists top-level imports
    assert not imported & {"torch", "transformers", "vllm"}


def test_check_inputs_imports_nothing_heavy(tmp_path):
    """In-process: the checks themselves never import torch (the subprocess test above covers the CLI)."""
    paths = _tree(tmp_path)
    cfg = load_config(None, model=str(paths["model"]), test_file=paths["test"], image_root=paths["root"], out="o")
    heavy = {"torch", "transformers", "vllm"}
    before = heavy & set(sys.modules)
    check_inputs(cfg)
    with pytest.raises(DataError, match="--image-root"):
        check_inputs(cfg.model_copy(update={"image_root": tmp_path / "nope"}))
    check_inputs(cfg.model_copy(update={"model": "gpt-4.1-mini", "backend": "openai"}))  # an API name: no folder
    assert heavy & set(sys.modules) == before


def test_an_unreadable_test_file_is_one_line(bench, tmp_path, monkeypatch):
    """Permission denied (root reads every file, so the error is raised by hand): one line, not a traceback."""
    base, _ = bench
    real = Path.read_text

    def denied(self: Path, *args, **kwargs) -> str:
        if self == Path(base["test_file"]):
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(DataError, match=r"test_DS_format.json: cannot read \(Permission denied\)$"):
        run_inference(**base, out=tmp_path / "o", engine=Oracle())


def test_old_spellings_still_work_with_a_warning(monkeypatch, capsys, tmp_path):
    """`--templates` and `--system-prompt` of 0.1 read as `--template-kind` and `--grammar-prompt`, with a line."""
    import iadr1.infer.runner as runner
    from iadr1.cli import main

    seen = {}

    class Stop(Exception):
        pass

    def fake(cfg, **kwargs):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr(runner, "run_inference", fake)
    args = ["infer", "--model", "m", "--test-file", "t.json", "--image-root", ".", "--out", str(tmp_path)]
    with pytest.raises(Stop):
        main([*args, "--templates", "similar", "--system-prompt"])
    assert (seen["cfg"].template_kind, seen["cfg"].grammar_prompt) == ("similar", True)
    err = capsys.readouterr().err
    assert "--templates is deprecated" in err and "--template-kind" in err and "--grammar-prompt" in err
    with pytest.raises(Stop):
        main([*args, "--template-kind", "similar", "--grammar-prompt"])
    assert "deprecated" not in capsys.readouterr().err
