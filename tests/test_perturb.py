"""Robustness runs (`iadr1 infer --perturb`): the perturbations (exact pixels), their specs, the backends seeing the
perturbed pixels, the predictions and manifest recording them, and `eval compare` showing the drop."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from infer_helpers import make_bench, write_png
from PIL import Image

from iadr1.data import perturb as P
from iadr1.data.io import load_rgb
from iadr1.errors import ConfigError
from iadr1.infer.base import Backend, GenerationOptions, Request, Result, request_images
from iadr1.infer.runner import InferConfig, load_config, run_inference

SEGMENTS = (None, "Are there any defects? Please answer by yes or no.")


def _grey(value: int, size: tuple[int, int] = (16, 8), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, value if mode == "L" else (value,) * 3)


def _edge(width: int = 10, at: int = 5) -> Image.Image:
    """A vertical edge: columns < `at` are 0, the others 255 (L, 3 rows)."""
    a = np.zeros((3, width), np.uint8)
    a[:, at:] = 255
    return Image.fromarray(a, "L")


# --- the pure functions ----------------------------------------------------------------------------------------
def test_lowlight_exact_pixels_and_clipping():
    out = P.apply(_grey(100), ["lowlight"])  # RobustMAD's default: 100 * 0.6 - 10 = 50
    assert out.size == (16, 8) and out.mode == "RGB" and (np.asarray(out) == 50).all()
    a = np.array([[0, 10, 25, 26, 200, 255]], np.uint8)
    got = np.asarray(P.apply(Image.fromarray(a, "L"), ["lowlight:0.6,-10"]))
    # 0 -> -10 -> 0 (clipped); 10 -> -4 -> 0; 25 -> 5; 26 -> 5.6 -> 6 (rounded); 200 -> 110; 255 -> 143
    assert got.tolist() == [[0, 0, 5, 6, 110, 143]]
    assert np.asarray(P.apply(_grey(200), ["lowlight:2,10"])).max() == 255  # clipped above
    assert P.lowlight(np.array([100], np.uint8)).tolist() == [50]


def test_blur_is_a_horizontal_box_ramp_across_a_vertical_edge():
    got = np.asarray(P.apply(_edge(), ["blur:4"]))
    # window of output x: columns x-2 .. x+1 -> sums 0, 255, 510, 765, 1020 over 4, rounded half up
    assert got.tolist() == [[0, 0, 0, 0, 64, 128, 191, 255, 255, 255]] * 3
    odd = np.asarray(P.apply(_edge(), ["blur:3"]))  # columns x-1 .. x+1
    assert odd[0].tolist() == [0, 0, 0, 0, 85, 170, 255, 255, 255, 255]
    # horizontal only: a horizontal edge is unchanged
    rows = np.zeros((6, 5), np.uint8)
    rows[3:] = 255
    assert (np.asarray(P.apply(Image.fromarray(rows, "L"), ["blur:12"])) == rows).all()
    assert P.parse("blur").spec == "blur:12"  # RobustMAD's 12 px is the default
    rgb = P.apply(_edge().convert("RGB"), ["blur:4"])
    assert rgb.mode == "RGB" and (np.asarray(rgb)[..., 1] == got).all()
    assert (np.asarray(P.apply(_edge(), ["blur:1"])) == np.asarray(_edge())).all()


def test_jpeg_changes_pixels_keeps_size_and_mode():
    src = write_png_image(7, (40, 24))
    for mode in ("RGB", "L"):
        im = src.convert(mode)
        out = P.apply(im, ["jpeg:30"])
        assert out.size == im.size and out.mode == mode
        assert not np.array_equal(np.asarray(out), np.asarray(im))
        assert np.array_equal(np.asarray(out), np.asarray(P.apply(im, ["jpeg:30"])))  # deterministic
    # exactly Pillow's encode/decode at that quality
    buf = io.BytesIO()
    src.convert("RGB").save(buf, format="JPEG", quality=30)
    want = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal(np.asarray(P.apply(src.convert("RGB"), ["jpeg:30"])), want)


def test_noise_is_seeded_and_its_std_matches_sigma():
    grey = _grey(128, (256, 256))
    a = np.asarray(P.apply(grey, ["noise:0.05"], seed=1)).astype(float)
    b = np.asarray(P.apply(grey, ["noise:0.05"], seed=1)).astype(float)
    c = np.asarray(P.apply(grey, ["noise:0.05"], seed=2)).astype(float)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.std() == pytest.approx(0.05 * 255, rel=0.02) and a.mean() == pytest.approx(128, abs=0.2)
    assert np.array_equal(np.asarray(P.apply(grey, ["noise:0"], seed=3)), np.asarray(grey))
    # the per-image seed: run seed and file bytes (SHA-256), stable across processes, not Python's salted hash
    assert P.image_seed(0, b"abc") == P.image_seed(0, b"abc") != P.image_seed(1, b"abc")
    assert P.image_seed(0, b"abc") == 0x8782B69B6722FF9B  # pinned: the same noise on every machine and release


def write_png_image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_apply_never_changes_its_input_and_works_at_the_images_own_size():
    im = write_png_image(3, (33, 17))
    before = np.asarray(im).copy()
    out = P.apply(im, ["lowlight", "blur:5", "jpeg:50", "noise:0.1"], seed=4)
    assert out.size == (33, 17) and np.array_equal(np.asarray(im), before)
    assert P.apply(im.convert("RGBA"), ["lowlight"]).mode == "RGB"  # other modes: RGB first


# --- specs -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("lowlight", "lowlight:0.6,-10"),
        ("lowlight:0.6,-10", "lowlight:0.6,-10"),
        (" LowLight : 0.50 , -10.0 ", "lowlight:0.5,-10"),
        ("blur:012", "blur:12"),
        ("jpeg:30", "jpeg:30"),
        ("noise:0.050", "noise:0.05"),
    ],
)
def test_spec_canonical_form(spec, canonical):
    p = P.parse(spec)
    assert p.spec == canonical == str(p) and P.parse(p.spec) == p


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("sepia", "unknown name 'sepia' (known: lowlight, blur, jpeg, noise)"),
        ("lowlight:0.6", "lowlight takes 2 argument(s), got 1"),
        ("blur:3,4", "blur takes 1 argument(s), got 2"),
        ("jpeg", "jpeg needs 1 argument(s)"),
        ("noise", "noise needs 1 argument(s)"),
        ("blur:2.5", "K must be an integer, got '2.5'"),
        ("lowlight:dim,-10", "SCALE must be a number, got 'dim'"),
        ("lowlight:nan,0", "SCALE must be finite"),
        ("jpeg:0", "Q 0 is out of range (1..100)"),
        ("jpeg:101", "Q 101 is out of range (1..100)"),
        ("noise:1.5", "SIGMA 1.5 is out of range"),
        ("noise:-0.1", "SIGMA -0.1 is out of range"),
        ("blur:0", "K 0 is out of range"),
        ("lowlight:0.6,-300", "OFFSET -300 is out of range"),
    ],
)
def test_bad_specs_are_one_line_naming_the_spec(spec, says):
    with pytest.raises(ConfigError) as e:
        P.parse(spec)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"perturbation {spec!r}: ") and says in msg


def test_infer_config_stores_canonical_specs_and_refuses_bad_ones(tmp_path):
    cfg = InferConfig(model="m", test_file="t", image_root="r", out="o", perturb=["lowlight", "blur:012"])
    assert cfg.perturb == ["lowlight:0.6,-10", "blur:12"]
    assert [p.spec for p in cfg.generation_options().perturb] == cfg.perturb
    assert InferConfig(model="m", test_file="t", image_root="r", out="o").generation_options().perturb == ()
    yaml = tmp_path / "infer.yaml"
    yaml.write_text("model: m\ntest_file: t\nimage_root: r\nout: o\nperturb:\n  - jpeg:30\n  - noise:0.05\n")
    assert load_config(yaml).perturb == ["jpeg:30", "noise:0.05"]
    assert load_config(yaml, perturb=["blur"]).perturb == ["blur:12"]  # a flag wins
    with pytest.raises(ConfigError) as e:
        load_config(yaml, perturb=["blur:x"])
    assert "\n" not in str(e.value) and "perturbation 'blur:x': K must be an integer" in str(e.value)


def test_cli_bad_perturb_is_one_red_line_before_any_model_load(tmp_path, capsys):
    from iadr1.cli import main

    test_file, root, _ = make_bench(tmp_path, n=2, corrupt=False, missing=False)
    with pytest.raises(SystemExit) as e:
        main(["infer", "--model", str(tmp_path / "nope"), "--test-file", str(test_file), "--image-root", str(root),
              "--out", str(tmp_path / "o"), "--perturb", "blur:12", "--perturb", "fog:3"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and "\n" not in err and "perturbation 'fog:3': unknown name 'fog'" in err


# --- composition ---------------------------------------------------------------------------------------------------
def test_composition_follows_the_order_given():
    im = write_png_image(11, (48, 32))
    ab = np.asarray(P.apply(im, ["lowlight", "jpeg:30"]))
    ba = np.asarray(P.apply(im, ["jpeg:30", "lowlight"]))
    assert not np.array_equal(ab, ba)
    by_hand = P.apply(P.apply(im, ["lowlight"]), ["jpeg:30"])
    assert np.array_equal(ab, np.asarray(by_hand))
    by_hand = Image.fromarray(P.lowlight(np.asarray(P.jpeg(im, 30))))
    assert np.array_equal(ba, np.asarray(by_hand))
    twice = np.asarray(P.apply(_edge(), ["blur:2", "blur:2"]))
    assert np.array_equal(twice, P.blur(P.blur(np.asarray(_edge()), 2), 2))


def test_load_image_seeds_noise_per_image_whatever_the_order_or_the_request(tmp_path):
    a = write_png(tmp_path / "a.png", 1, size=(30, 20))
    b = write_png(tmp_path / "b.png", 2, size=(30, 20))
    copy = tmp_path / "elsewhere" / "a.png"
    copy.parent.mkdir()
    copy.write_bytes(a.read_bytes())
    opts = GenerationOptions(perturb=P.parse_all(["noise:0.1"]), seed=5)
    both = request_images(Request(key="b", segments=(None, None), images=(a, b)), opts)
    alone = request_images(Request(key="b", segments=(None,), images=(b,)), opts)
    reversed_ = request_images(Request(key="a", segments=(None, None), images=(b, a)), opts)
    assert np.array_equal(np.asarray(both[1]), np.asarray(alone[0]))  # batching and references do not matter
    assert np.array_equal(np.asarray(both[0]), np.asarray(reversed_[1]))  # nor the order
    assert np.array_equal(np.asarray(P.load_image(copy, opts.perturb, 5)), np.asarray(both[0]))  # nor the folder
    assert not np.array_equal(np.asarray(P.load_image(a, opts.perturb, 6)), np.asarray(both[0]))  # the run seed does
    want = P.apply(load_rgb(a), ["noise:0.1"], P.image_seed(5, a.read_bytes()))
    assert np.array_equal(np.asarray(both[0]), np.asarray(want))
    clean = request_images(Request(key="a", segments=(None,), images=(a,)), GenerationOptions())
    assert np.array_equal(np.asarray(clean[0]), np.asarray(load_rgb(a)))


# --- the backends see the perturbed pixels ---------------------------------------------------------------------
def test_transformers_backend_feeds_the_perturbed_pixels(tiny_model, tmp_path):
    import torch

    from iadr1.infer.transformers_backend import TransformersBackend

    query = write_png(tmp_path / "q.png", 0, size=(300, 200))
    ref = write_png(tmp_path / "r.png", 1, size=(200, 150))
    chain = ["lowlight:0.6,-10", "blur:12"]
    by_hand = {p: tmp_path / f"hand_{p.name}" for p in (query, ref)}
    for src, dst in by_hand.items():
        P.apply(load_rgb(src), chain).save(dst)  # PNG: lossless

    opts = GenerationOptions(max_new_tokens=2)
    engine = TransformersBackend(tiny_model("qwen2_vl"), opts, batch_size=2, max_pixels=12544)
    segments = (None, None, "Are there any defects?")
    req = Request(key="q", segments=segments, images=(ref, query))
    clean = engine.inputs([req])
    hand = engine.inputs([Request(key="q", segments=segments, images=(by_hand[ref], by_hand[query]))])
    engine.options = replace(opts, perturb=P.parse_all(chain))
    got = engine.inputs([req])
    assert got["pixel_values"].shape == clean["pixel_values"].shape
    assert torch.equal(got["pixel_values"], hand["pixel_values"])
    assert not torch.equal(got["pixel_values"], clean["pixel_values"])
    assert torch.equal(got["image_grid_thw"], clean["image_grid_thw"])  # perturbed at its own size, then sized


def test_vllm_backend_queues_the_perturbed_images(tiny_model, tmp_path, fake_vllm):
    from iadr1.infer.vllm_backend import VLLMBackend
    from iadr1.models.loading import fit_image

    query = write_png(tmp_path / "q.png", 0, size=(300, 200))
    chain = P.parse_all(["blur:12", "noise:0.05"])
    engine = VLLMBackend(tiny_model("qwen2_vl"), GenerationOptions(max_new_tokens=2, perturb=chain), max_pixels=12544)
    got = engine._prompt(Request(key="q", segments=SEGMENTS, images=(query,)))["multi_modal_data"]["image"]
    want = fit_image(P.load_image(query, chain, 0), 12544, engine.image_factor)
    assert [im.size for im in got] == [want.size] and np.array_equal(np.asarray(got[0]), np.asarray(want))
    clean = VLLMBackend(tiny_model("qwen2_vl"), GenerationOptions(max_new_tokens=2), max_pixels=12544)
    plain = clean._prompt(Request(key="q", segments=SEGMENTS, images=(query,)))["multi_modal_data"]["image"]
    assert not np.array_equal(np.asarray(plain[0]), np.asarray(got[0]))


def test_openai_backend_sends_the_perturbed_images(openai_server, tmp_path):
    from conftest import STUB_KEY_ENV

    from iadr1.infer.openai_backend import OpenAIBackend
    from iadr1.prompts import inference_segments

    query = write_png(tmp_path / "q.png", 0, size=(70, 50))
    refs = [write_png(tmp_path / f"r{i}.png", 10 + i, size=(30 + i, 20)) for i in range(2)]
    big = write_png(tmp_path / "big.png", 3, size=(1000, 600))
    chain = P.parse_all(["lowlight", "jpeg:30"])
    opts = GenerationOptions(max_new_tokens=600, prompt_style="api", logprobs=False, perturb=chain)
    backend = OpenAIBackend("gpt-test", opts, base_url=openai_server.base_url, api_key_env=STUB_KEY_ENV, max_side=512)
    requests = [
        Request(key="q", segments=tuple(inference_segments(2, "api")), images=(*refs, query)),
        Request(key="big", segments=tuple(inference_segments(0, "api")), images=(big,)),
    ]
    results = dict((r.key, res) for r, res in backend.generate(requests))
    assert all(res.error is None for res in results.values())
    sent = {}
    for req in openai_server.requests:
        parts = req["body"]["messages"][-1]["content"]
        images = []
        for part in parts:
            if part["type"] == "image_url":
                head, data = part["image_url"]["url"].split(",", 1)
                assert head == "data:image/png;base64"  # lossless: the model sees the perturbation exactly
                images.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")))
        sent[len(images)] = images
    want = [np.asarray(P.apply(load_rgb(p), chain)) for p in (*refs, query)]
    assert len(sent[3]) == 3 and all(np.array_equal(a, b) for a, b in zip(sent[3], want, strict=True))
    # resized to --max-side after the perturbation, at the image's own size
    hand = P.apply(load_rgb(big), chain)
    hand.thumbnail((512, 512), Image.Resampling.LANCZOS)
    assert sent[1][0].shape == (307, 512, 3) and np.array_equal(sent[1][0], np.asarray(hand))
    backend.close()


# --- predictions and the manifest --------------------------------------------------------------------------------
class PixelBackend(Backend):
    """Reads each request's images as the real backends do; answers yes when the query's mean is below 100."""

    name = "pixels"

    def __init__(self, perturb: list[str] | None = None, seed: int = 0) -> None:
        self.options = GenerationOptions(perturb=P.parse_all(perturb), seed=seed)
        self.means: dict[str, float] = {}

    def generate(self, requests):
        for r in requests:
            mean = float(np.asarray(request_images(r, self.options)[-1]).mean())
            self.means[r.key] = mean
            yield r, Result(raw=f"<think>x</think><answer>{'Yes' if mean < 100 else 'No'}</answer>", latency_s=0.0)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_predictions_and_manifest_record_the_perturbations_and_folders_refuse_to_mix(tmp_path):
    test_file, root, keys = make_bench(tmp_path, n=4, corrupt=False, missing=False)
    base = {"model": "m", "test_file": test_file, "image_root": root, "backend": "openai"}
    chain = ["lowlight", "noise:0.05"]

    clean = run_inference(**base, out=tmp_path / "clean", engine=PixelBackend())
    lines = _lines(clean.predictions)
    assert len(lines) == 4 and all("perturb" not in line for line in lines)  # clean lines as before
    settings = json.loads(clean.manifest.read_text())["settings"]
    assert "perturb" not in settings and settings["seed"] is None  # old folders still resume

    engine = PixelBackend(chain)
    pert = run_inference(**base, out=tmp_path / "pert", perturb=chain, engine=engine)
    lines = _lines(pert.predictions)
    assert [line["perturb"] for line in lines] == [["lowlight:0.6,-10", "noise:0.05"]] * 4
    settings = json.loads(pert.manifest.read_text())["settings"]
    assert settings["perturb"] == ["lowlight:0.6,-10", "noise:0.05"] and settings["seed"] == 0  # noise: seeded
    for k in keys:  # the backend saw the perturbed images (darker: about 0.6 x - 10)
        want = float(np.asarray(P.load_image(root / k, P.parse_all(chain), 0)).mean())
        assert engine.means[k] == want < float(np.asarray(load_rgb(root / k)).mean()) * 0.6

    again = run_inference(**base, out=tmp_path / "pert", perturb=["lowlight:0.6,-10", "noise:0.050"], engine=engine)
    assert again.written == 0 and again.notes[0].startswith("nothing to do")  # same canonical specs: resumes

    with pytest.raises(ConfigError) as e:  # a perturbed run never resumes into a clean folder
        run_inference(**base, out=tmp_path / "clean", perturb=chain, engine=PixelBackend(chain))
    msg = str(e.value)
    assert "\n" not in msg and "other settings" in msg and "perturb not recorded here" in msg
    with pytest.raises(ConfigError, match="perturb .* here, not recorded in this run"):
        run_inference(**base, out=tmp_path / "pert", engine=PixelBackend())
    with pytest.raises(ConfigError, match="seed 0 here, 1 in this run"):  # another noise seed is another run
        run_inference(**base, out=tmp_path / "pert", perturb=chain, seed=1, engine=PixelBackend(chain, seed=1))
    with pytest.raises(ConfigError, match="the backend passed in perturbs images with"):
        run_inference(**base, out=tmp_path / "other", perturb=chain, engine=PixelBackend())


def test_eval_records_the_perturbation_in_its_run_block(tmp_path):
    from iadr1.eval.pipeline import evaluate

    test_file, root, _ = make_bench(tmp_path, n=4, corrupt=False, missing=False)
    base = {"model": "m", "test_file": test_file, "image_root": root, "backend": "openai"}
    pert = run_inference(**base, out=tmp_path / "pert", perturb=["blur"], engine=PixelBackend(["blur"]))
    clean = run_inference(**base, out=tmp_path / "clean", engine=PixelBackend())
    result = evaluate([test_file], [pert.predictions], n_boot=0)
    assert result.run["perturb"] == ["blur:12"]
    assert "images perturbed at inference (iadr1 infer --perturb): blur:12" in result.notes
    assert evaluate([test_file], [clean.predictions], n_boot=0).run["perturb"] == []
    half = run_inference(**base, out=tmp_path / "half", shard=1, num_shards=2, engine=PixelBackend())
    other = run_inference(**base, out=tmp_path / "other", perturb=["blur"], num_shards=2, engine=PixelBackend(["blur"]))
    mixed = evaluate([test_file], [half.predictions, other.predictions], n_boot=0)
    assert mixed.run["perturb"] is None and any("different image perturbations" in w for w in mixed.warnings)


# --- eval compare: the drop against the clean run ------------------------------------------------------------------
def _metrics(folder: Path, name: str, perturb: list[str] | None, ba: float, auroc: float | None, **more) -> Path:
    folder.mkdir(parents=True)
    ds = {"balanced_accuracy": ba, "auroc": auroc, "miss": 100 - ba, **more}
    run = {"name": name, **({"perturb": perturb} if perturb is not None else {})}
    (folder / "metrics.json").write_text(json.dumps({"datasets": {"SYNTH": ds}, "average": ds, "run": run}))
    return folder


def test_compare_shows_the_drop_against_the_clean_run(tmp_path, capsys):
    from iadr1.cli import main

    clean = _metrics(tmp_path / "clean", "clean", [], 94.0, 97.5, type_accuracy=84.0)
    dark = _metrics(tmp_path / "dark", "dark", ["lowlight:0.6,-10"], 80.5, 90.25, type_accuracy=70.0)
    blur = _metrics(tmp_path / "blur", "blur", ["blur:12"], 95.0, None, type_accuracy=None)
    main(["eval", "compare", str(clean), str(dark), str(blur), "--out", str(tmp_path / "cmp")])
    out = capsys.readouterr().out
    assert "against clean" in out and "-13.5" in out and "-7.2" in out and "+1.0" in out

    md = (tmp_path / "cmp" / "compare.md").read_text().split("\n\n")
    assert md[0].splitlines()[2] == "| clean | 94.0 | 94.0 |"  # the paper's table first, as before
    table = md[-1].strip().splitlines()
    assert table[0] == "| run | perturbation | balanced acc. | Δ | AUROC | Δ | type acc. | Δ |"
    assert table[2] == "| clean (baseline) | clean | 94.0 |  | 97.5 |  | 84.0 |  |"
    assert table[3] == "| dark | lowlight:0.6,-10 | 80.5 | -13.5 | 90.2 | -7.2 | 70.0 | -14.0 |"
    assert table[4] == "| blur | blur:12 | 95.0 | +1.0 |  |  |  |  |"

    csv = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()
    assert csv[0] == (",SYNTH,Average,perturbation,baseline,balanced_accuracy,delta_balanced_accuracy,auroc,"
                      "delta_auroc,type_accuracy,delta_type_accuracy")  # fmt: skip
    assert csv[1] == "clean,94.0,94.0,clean,1,94.0,0.0,97.5,0.0,84.0,0.0"
    assert csv[2] == 'dark,80.5,80.5,"lowlight:0.6,-10",0,80.5,-13.5,90.25,-7.25,70.0,-14.0'
    assert csv[3] == "blur,95.0,95.0,blur:12,0,95.0,1.0,,,,"


def test_compare_baseline_option_and_unchanged_output_without_one(tmp_path, capsys):
    from iadr1.eval.compare import compare, to_csv, to_markdown

    a = _metrics(tmp_path / "a", "a", None, 90.0, 95.0)
    b = _metrics(tmp_path / "b", "b", None, 85.0, 91.0)
    plain = compare([a, b])  # no perturbation recorded, no --baseline: the table as before
    assert not plain.delta and "perturbation" not in to_markdown(plain) + to_csv(plain)
    by_name = compare([a, b], baseline="b")
    assert by_name.baseline == "b" and [r.deltas["balanced_accuracy"] for r in by_name.delta] == [5.0, 0.0]
    assert [r.perturb_label for r in by_name.delta] == ["?", "?"]  # not recorded in these metrics.json
    assert compare([a, b], baseline="1").baseline == "b" and compare([a, b], baseline=str(a)).baseline == "a"
    with pytest.raises(ConfigError, match=r"--baseline c: not a run name \(a, b\), a folder given, or an index 0..1"):
        compare([a, b], baseline="c")


def test_predict_takes_the_flag_too(tmp_path, capsys):
    from iadr1.cli import main

    image = write_png(tmp_path / "a.png", 0)
    with pytest.raises(SystemExit) as e:
        main(["predict", str(image), "--model", str(tmp_path), "--out", str(tmp_path / "o"), "--perturb", "jpeg"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and "\n" not in err and "--perturb: perturbation 'jpeg': jpeg needs 1 argument" in err
    cfg = InferConfig(model="m", test_file="t", image_root="r", out="o", perturb=["jpeg:30"])
    assert cfg.generation_options().perturb == (P.Perturbation("jpeg", (30,)),)
