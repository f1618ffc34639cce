"""`iadr1 app`: the record -> page outputs (answer, call at the threshold, the named cell drawn), and the real page
served by Gradio and driven in headless Chromium (Playwright), on a stub backend and on a tiny random model."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import missing
from PIL import Image

from iadr1.app import (
    DEFAULT_THRESHOLD,
    FRAME_COLOR,
    answer_label,
    ask,
    cell_box,
    draw_cell,
    named_cell,
    render,
    run_app,
    score_of,
    threshold_call,
)
from iadr1.cli import main
from iadr1.errors import ConfigError
from iadr1.infer.base import Backend, Result
from iadr1.infer.runner import InferConfig

CHROMIUM = Path("/usr/bin/chromium")
DEFECT_RAW = (
    "<think>A thin bright scratch.</think><location>top left</location><type>scratch</type><answer>yes</answer>"
)


def icfg(model: str | Path = "stub", **kw) -> InferConfig:
    here = Path(".")
    return InferConfig(model=str(model), test_file=here, image_root=here, out=here, **kw)


def write_png(path: Path, size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(30, 200, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def record(image: Path, **kw) -> dict:
    base = {"image": str(image), "answer": None, "p_yes": None, "location": None, "type": None, "reasoning": None,
            "raw": "", "error": None, "reference": None}  # fmt: skip
    return base | kw


def _need(module: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        missing(why)


def frame_box(im: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom), exclusive, of the pixels in the frame colour; None when there are none."""
    a = np.asarray(im.convert("RGB")).astype(int)
    yellow = (np.abs(a - np.array(FRAME_COLOR)).sum(axis=2) == 0).nonzero()
    if not len(yellow[0]):
        return None
    return int(yellow[1].min()), int(yellow[0].min()), int(yellow[1].max()) + 1, int(yellow[0].max()) + 1


# ---------------------------------------------------------------------------------------------------------------
# Unit level: the record -> what the page shows
# ---------------------------------------------------------------------------------------------------------------
def test_score_of_prefers_p_defect_then_p_yes():
    assert score_of({"p_defect": 0.2, "p_yes": 0.9}) == 0.2
    assert score_of({"p_defect": 0.0, "p_yes": 0.9}) == 0.0  # 0 is a score, not a missing one
    assert score_of({"p_defect": None, "p_yes": 0.7}) == 0.7
    assert score_of({"p_yes": 0.7}) == 0.7
    assert score_of({"p_defect": None, "p_yes": None}) is None and score_of({}) is None
    assert threshold_call({"p_yes": 0.5}, 0.5) == "defective"  # >= threshold
    assert threshold_call({"p_yes": 0.49}, 0.5) == "normal"
    assert threshold_call({"p_yes": None}, 0.5) is None
    assert threshold_call({"p_yes": 0.9, "error": "boom"}, 0.5) is None


@pytest.mark.parametrize("location,cell", [("top left", 1), ("top right", 3), ("center", 5), ("bottom", 8)])
def test_a_defect_frames_the_named_cell(tmp_path, location, cell):
    img = write_png(tmp_path / "part.png", (600, 450))
    rec = record(img, answer="yes", p_yes=0.9, location=location, type="scratch",
                 reasoning="a <b>line</b> & more", raw=DEFECT_RAW)  # fmt: skip
    view = render(rec, DEFAULT_THRESHOLD)
    assert named_cell(rec) == cell
    assert "Defective at threshold 0.50" in view.html and "score 0.900 (P(yes))" in view.html
    assert "Model's answer: <b" in view.html and ">defective</b>" in view.html
    assert "<b>scratch</b>" in view.html and f"cell {cell}" in view.html
    assert "a &lt;b&gt;line&lt;/b&gt; &amp; more" in view.html, "the model's text is escaped"
    assert view.raw == DEFECT_RAW
    assert view.image is not None and view.image.size == (600, 450)
    assert frame_box(view.image) == cell_box(cell, 600, 450), "the yellow frame is exactly the named cell's box"
    left, top, right, bottom = cell_box(cell, 600, 450)
    assert (right - left, bottom - top) == (200, 150)
    # Above the score the call flips to normal; the bare answer stays defective, the frame stays.
    high = render(rec, 0.95)
    assert "Normal at threshold 0.95" in high.html and 'data-call="normal"' in high.html
    assert 'data-answer="defective"' in high.html and frame_box(high.image) == frame_box(view.image)


def test_p_defect_is_the_score_when_present(tmp_path):
    img = write_png(tmp_path / "part.png")
    rec = record(img, answer="yes", p_yes=0.9, p_defect=0.3, location="top", type="dent")
    view = render(rec, 0.5)
    assert "Normal at threshold 0.50" in view.html and "score 0.300 (P(defect))" in view.html
    assert "P(defect) 0.300" in view.html and "P(yes) 0.900" in view.html


def test_small_and_large_images_are_sized_for_the_page_and_keep_the_cell(tmp_path):
    small = draw_cell(Image.new("RGB", (90, 60), "black"), 9)  # enlarged by whole pixels
    assert small.size == (450, 300) and frame_box(small) == cell_box(9, 450, 300)
    large = draw_cell(Image.new("L", (3000, 1500), 0), 4)
    assert large.size == (1024, 512) and large.mode == "RGB" and frame_box(large) == cell_box(4, 1024, 512)
    assert frame_box(draw_cell(Image.new("RGB", (90, 60)), None)) is None


def test_failed_unanswered_and_scoreless_records_show_a_message(tmp_path):
    img = write_png(tmp_path / "part.png")
    failed = render(record(img, error="image part.png: cannot identify image file <x>"), 0.5)
    assert answer_label(record(img, error="x")) == "failed"
    assert "Failed: image part.png: cannot identify image file &lt;x&gt;" in failed.html
    assert failed.image is None and 'data-call="none"' in failed.html

    unanswered = record(img, raw="lorem ipsum", p_yes=None)  # the tiny random model's usual reply
    view = render(unanswered, 0.5)
    assert answer_label(unanswered) == "no answer" and 'data-answer="no answer"' in view.html
    assert "No decision score" in view.html and "no call at threshold 0.50" in view.html
    assert view.raw == "lorem ipsum" and view.image is not None and frame_box(view.image) is None

    scored = render(record(img, raw="x", p_yes=0.7), 0.5)  # no answer tag, but a score: the call still stands
    assert "Defective at threshold 0.50" in scored.html and 'data-answer="no answer"' in scored.html

    normal = render(record(img, answer="no", p_yes=0.1, location="top left", reasoning="uniform"), 0.5)
    assert "Normal at threshold 0.50" in normal.html and frame_box(normal.image) is None  # no cell unless a defect

    nowhere = record(img, answer="yes", p_yes=0.9, location="scattered", type="stain")
    assert named_cell(nowhere) is None and "names no cell" in render(nowhere, 0.5).html
    assert frame_box(render(nowhere, 0.5).image) is None

    gone = render(record(tmp_path / "deleted.png", answer="no", p_yes=0.2), 0.5)
    assert gone.image is None and "could not be shown" in gone.html
    assert 'data-state="empty"' in render(None, 0.5).html


class StubBackend(Backend):
    """Answers the requests with `replies` in turn, (raw, p_yes) each (or raises `fail`); remembers the requests."""

    name = "stub"

    def __init__(self, replies: list[tuple[str, float | None]] | None = None, fail: Exception | None = None) -> None:
        self.replies, self.fail = replies or [(DEFECT_RAW, 0.9)], fail
        self.requests: list = []

    def generate(self, requests):
        for req in requests:
            raw, p_yes = self.replies[len(self.requests) % len(self.replies)]
            self.requests.append(req)
            if self.fail is not None:
                raise self.fail
            yield req, Result(raw=raw, p_yes=p_yes, latency_s=0.01)


def test_ask_turns_backend_failures_and_bad_images_into_records(tmp_path):
    img = write_png(tmp_path / "part.png")
    rec, elapsed = ask(StubBackend(fail=RuntimeError("CUDA out of memory")), icfg(), img, None)
    assert rec["error"] == "RuntimeError: CUDA out of memory" and elapsed >= 0
    assert "Failed: RuntimeError: CUDA out of memory" in render(rec, 0.5).html
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    rec, _ = ask(StubBackend(), icfg(), tmp_path / "broken.png", None)
    assert rec["error"] and "Failed: image" in render(rec, 0.5).html
    engine = StubBackend()
    rec, _ = ask(engine, icfg(), img, tmp_path / "broken.png")
    assert rec["error"].startswith("reference") and not engine.requests, "a bad reference never reaches the model"
    assert ask(engine, icfg(), None, None) == (None, 0.0)
    rec, _ = ask(engine, icfg(), img, img)
    assert rec["shots"] == 1 and rec["answer"] == "yes" and len(engine.requests[-1].images) == 2


def test_help_does_not_import_gradio_and_a_missing_gradio_is_one_line(tmp_path, monkeypatch, capsys):
    probe = "import sys; from iadr1.cli import main; import iadr1.cli.webapp; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    with pytest.raises(ConfigError, match=re.escape("iadr1 app needs gradio (")) as exc:
        run_app(icfg(tmp_path / "none"))  # before the model is looked at
    assert str(exc.value).endswith("pip install 'iadr1[app]'")
    with pytest.raises(SystemExit):
        main(["app", "--model", str(tmp_path / "none")])
    assert "error: iadr1 app needs gradio" in capsys.readouterr().err


def test_the_command_refuses_bad_inputs_before_loading(tmp_path, capsys):
    _need("gradio", "gradio not installed (the `app` extra: pip install -e '.[app]')")
    with pytest.raises(SystemExit):
        main(["app", "--model", str(tmp_path / "none")])
    assert "not a checkpoint folder" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit):
        main(["app", "--model", str(tmp_path / "m"), "--reference", str(tmp_path / "bad.png")])
    assert "--reference" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["app", "--model", str(tmp_path / "m"), "--threshold", "1.5"])


# ---------------------------------------------------------------------------------------------------------------
# The real page: Gradio serving it, headless Chromium (Playwright) driving it
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    _need("gradio", "gradio not installed (the `app` extra: pip install -e '.[app]')")
    _need("playwright", "playwright not installed (the `test` extra)")
    if not CHROMIUM.exists():
        missing("chromium not installed (`make install` installs Debian's package `chromium` when root)")
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        chrome = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
    except Exception:
        pw.stop()
        raise
    yield chrome
    chrome.close()
    pw.stop()


@pytest.fixture(autouse=True)
def _gradio_cache(tmp_path, monkeypatch):
    """Gradio copies uploads into GRADIO_TEMP_DIR: the test's own folder, not a shared /tmp/gradio."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))


@contextlib.contextmanager
def served(engine: Backend, cfg: InferConfig, **kw) -> Iterator[str]:
    from iadr1.app import build_app, launch_app

    demo = build_app(engine, cfg, **kw)
    url = launch_app(demo, "127.0.0.1", 0)
    try:
        yield url
    finally:
        demo.close()


def inspect_image(page, url: str, image: Path) -> None:
    """Open the page, upload `image`, press Inspect and wait for the result panel."""
    page.goto(url)
    page.wait_for_selector("#iadr1-inspect")
    page.set_input_files("#iadr1-image input[type=file]", str(image))
    page.wait_for_selector("#iadr1-image img")  # uploaded: the preview is shown
    page.click("#iadr1-inspect")
    page.wait_for_selector("#iadr1-result[data-state=done]", timeout=60_000)


def raw_shown(page) -> str:
    """Open the collapsed "Raw reply" accordion and read the reply."""
    box = page.locator("#iadr1-raw textarea")
    assert not box.is_visible(), "the raw reply starts collapsed"
    page.locator("#iadr1-raw-accordion").get_by_text("Raw reply", exact=True).click()
    box.wait_for(state="visible")
    return box.input_value()


def non_blank_png(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 800 and im.height >= 500, im.size
        gray = np.asarray(im.convert("L"))
    assert gray.std() > 10 and len(np.unique(gray)) > 20, "the screenshot is blank"


@pytest.mark.e2e
def test_page_on_a_stub_engine_shows_the_defect_and_follows_the_threshold(browser, tmp_path):
    example = write_png(tmp_path / "part_017.png", (240, 180), seed=1)
    ref = write_png(tmp_path / "good.png", (240, 180), seed=2)
    other = write_png(tmp_path / "part_018.png", (240, 180), seed=3)
    defect = DEFECT_RAW.replace("A thin", "A <i>thin</i>")
    engine = StubBackend([(defect, 0.9), ("<think>Uniform.</think><answer>no</answer>", 0.2)])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside: list[str] = []
    with served(engine, icfg(), threshold=0.5, default_reference=ref, examples=[example]) as url:
        page.on(
            "request",
            lambda r: None if r.url.startswith((url.rstrip("/"), "data:", "blob:")) else outside.append(r.url),
        )
        secret = tmp_path / "secret.txt"
        secret.write_text("not for the page")
        for path in (secret, ref, Path.cwd() / "pyproject.toml"):  # beside the reference, in the working folder
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
            assert exc.value.code in (403, 404), (path, exc.value.code)
        page.goto(url)
        page.wait_for_selector("#iadr1-reference img")  # the default reference is in its slot
        cached = page.get_attribute("#iadr1-reference img", "src")  # served from Gradio's cache, not from its folder
        assert "gradio_api/file=" in cached and str(tmp_path / "gradio") in cached
        with urllib.request.urlopen(cached, timeout=10) as r:
            assert r.status == 200 and r.read() == ref.read_bytes()
        page.locator("#iadr1-examples button.gallery-item").first.click()  # pick the example
        page.wait_for_selector("#iadr1-image img")
        page.click("#iadr1-inspect")
        page.wait_for_selector("#iadr1-result[data-state=done]")
        panel = page.locator("#iadr1-result")
        text = panel.inner_text()
        assert "Defective at threshold 0.50" in text and "score 0.900 (P(yes))" in text
        assert "Model's answer: defective" in text and "Type: scratch" in text and "top left" in text
        assert "A <i>thin</i> bright scratch." in text, "the reply's markup is shown as text, not run"
        assert page.locator("#iadr1-result i").count() == 0
        assert len(engine.requests) == 1 and len(engine.requests[0].images) == 2, "the default reference: one-shot"
        assert [p.name for p in engine.requests[0].images] == ["good.png", "part_017.png"]
        assert page.locator("#iadr1-overlay img").count() == 1  # the image with the cell drawn
        # The threshold above the score: the call flips, the model is not asked again.
        number = page.locator("#iadr1-threshold input[type=number]")
        number.fill("0.95")
        number.press("Enter")
        page.wait_for_selector("#iadr1-result[data-call=normal]")
        text = panel.inner_text()
        assert "Normal at threshold 0.95" in text and "Model's answer: defective" in text
        assert len(engine.requests) == 1
        assert raw_shown(page) == defect
        page.screenshot(path=str(tmp_path / "stub.png"), full_page=True)
        # Reference removed, another image uploaded: zero-shot, the next reply shown.
        page.click("#iadr1-reference button[aria-label='Remove Image']")
        page.wait_for_selector("#iadr1-reference img", state="detached")
        page.set_input_files("#iadr1-image input[type=file]", str(other))
        page.wait_for_function("document.querySelector('#iadr1-image img')?.src.includes('part_018')")
        page.click("#iadr1-inspect")
        page.wait_for_selector("#iadr1-result[data-answer=normal]")
        assert [p.name for p in engine.requests[1].images] == ["part_018.png"]
        assert "Normal at threshold 0.95" in panel.inner_text() and "score 0.200" in panel.inner_text()
    page.close()
    assert outside == [], "the page asks nothing of the internet"
    non_blank_png(tmp_path / "stub.png")


@pytest.mark.e2e
def test_page_on_a_tiny_model_shows_what_the_model_answered(browser, tiny_model_factory, tmp_path):
    from iadr1.infer.predict import answer_image
    from iadr1.infer.runner import make_backend

    img = write_png(tmp_path / "part.png", (64, 64), seed=3)
    cfg = icfg(tiny_model_factory("qwen2_vl"), backend="transformers", device="cpu", max_new_tokens=24)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    with make_backend(cfg) as engine:
        expected = answer_image(engine, cfg, img)  # greedy: the page must show this same reply
        assert expected["error"] is None and expected["raw"]
        with served(engine, cfg) as url:
            inspect_image(page, url, img)
            panel = page.locator("#iadr1-result")
            assert panel.get_attribute("data-answer") == answer_label(expected)
            text = panel.inner_text()
            if answer_label(expected) == "no answer":
                assert "Model's answer: no answer" in text
            call = threshold_call(expected, DEFAULT_THRESHOLD)
            assert panel.get_attribute("data-call") == (call or "none")
            assert ("No decision score" in text) == (call is None)
            assert raw_shown(page) == expected["raw"]
            page.screenshot(path=str(tmp_path / "tiny.png"), full_page=True)
    page.close()
    non_blank_png(tmp_path / "tiny.png")


@pytest.mark.e2e
def test_cli_app_serves_the_page(tiny_model_factory, tmp_path):
    """`iadr1 app` as a user starts it: the model loads, the URL is printed, the page answers over HTTP."""
    _need("gradio", "gradio not installed (the `app` extra: pip install -e '.[app]')")
    import json
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = tiny_model_factory("qwen2_vl")
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "iadr1", "app", "--model", str(model), "--port", str(port), "--device", "cpu",
         "--max-new-tokens", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "iadr1 app: http" in line:
                break
        assert any(f"http://127.0.0.1:{port}" in line for line in lines), "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as r:
            config = json.load(r)
        ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert {"iadr1-image", "iadr1-inspect", "iadr1-panel", "iadr1-threshold"} <= ids
    finally:
        proc.terminate()
        proc.wait(timeout=30)
