"""`iadr1 app`: a trained model behind a web page (Gradio), one image at a time (docs/deploy.md, "A web app").

The user uploads an image (or picks an example) and, optionally, a normal reference image of the same part (the
prompt is then one-shot, the reference first, as `iadr1 predict --reference` does). The page shows the model's
bare answer (defective, normal, no answer), P(yes), the decision score (`score_of`) against a threshold slider and
the call at that threshold, the defect type, the 3x3 cell the reply names framed over the image (as gallery.html
frames it), the reasoning, and the raw reply. The backend is opened once, at start-up; every request goes through
`iadr1.infer.predict.answer_image`, one at a time (the model is not shared between requests in flight).

Gradio is imported only in `build_app` and `launch_app` (the `app` extra: `pip install 'iadr1[app]'`): the core
package and `iadr1 --help` do not need it.
"""

from __future__ import annotations

import html
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from iadr1.data.annotate.masks import GRID_WORDS
from iadr1.errors import ConfigError
from iadr1.rewards.location import location_cell

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from iadr1.infer.base import Backend
    from iadr1.infer.runner import InferConfig

DEFAULT_THRESHOLD = 0.5
DISPLAY_SIDE = 1024  # the shown image is at most this many pixels on its long side ...
MIN_DISPLAY_SIDE = 384  # ... and at least this many (small images are enlarged, pixels kept square)
FRAME_COLOR = (255, 208, 0)  # gallery.html's #ffd000
RESULT_ID = "iadr1-result"  # elem_id of the result panel (tests and page scripts find it by this)
_PLACEHOLDER = "Upload an image (or pick an example), then press Inspect."
_COLORS = {"defective": "#b00", "normal": "#070", "no answer": "#a60", "failed": "#b00"}


def score_of(rec: dict[str, Any]) -> float | None:
    """The decision score of a predictions record (`iadr1.ranking.decision_score`): `p_defect` where the record
    has one, else `p_yes`; None when it has neither (an API backend without log-probabilities, a failed request)."""
    from iadr1.ranking import decision_score

    value = decision_score(rec.get("p_defect"), rec.get("p_yes"))
    return None if value is None else float(value)


def answer_label(rec: dict[str, Any]) -> str:
    """The model's bare answer as the page words it: failed, defective, normal or no answer."""
    if rec.get("error"):
        return "failed"
    return {"yes": "defective", "no": "normal"}.get(rec.get("answer"), "no answer")


def threshold_call(rec: dict[str, Any], threshold: float) -> str | None:
    """ "defective" when the decision score is >= `threshold`, "normal" below it, None without a score (or for a
    failed record)."""
    from iadr1.ranking import threshold_decision

    call = threshold_decision(None if rec.get("error") else score_of(rec), threshold)
    return None if call is None else {"yes": "defective", "no": "normal"}[call]


def named_cell(rec: dict[str, Any]) -> int | None:
    """The grid cell (1..9, row-major) a defective answer's location names (strict rule: a location without a
    direction or centre word names none); None for any other answer."""
    if rec.get("error") or rec.get("answer") != "yes":
        return None
    return location_cell(rec.get("location") or "", strict=True)


def cell_box(cell: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), right and bottom exclusive, of grid cell `cell` (1..9) of a width x height
    image: the same thirds as gallery.html's frame."""
    r, c = divmod(cell - 1, 3)
    return (c * width // 3, r * height // 3, (c + 1) * width // 3, (r + 1) * height // 3)


def draw_cell(image: PILImage.Image, cell: int | None) -> PILImage.Image:
    """An RGB copy of `image` sized for the page (long side shrunk to DISPLAY_SIDE, or enlarged to MIN_DISPLAY_SIDE
    by whole pixels) with grid cell `cell` framed in yellow, the frame inside the cell's box; no frame for None."""
    from PIL import Image, ImageDraw

    im = image.convert("RGB")
    im.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    if max(im.size) < MIN_DISPLAY_SIDE:
        k = -(-MIN_DISPLAY_SIDE // max(im.size))
        im = im.resize((im.width * k, im.height * k), Image.Resampling.NEAREST)
    if cell is not None:
        left, top, right, bottom = cell_box(cell, *im.size)
        width = max(2, round(min(im.size) / 100))
        ImageDraw.Draw(im).rectangle((left, top, right - 1, bottom - 1), outline=FRAME_COLOR, width=width)
    return im


class View(NamedTuple):
    """What the page shows for one record: the result panel (HTML), the image with the cell drawn, the raw reply."""

    html: str
    image: PILImage.Image | None
    raw: str


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(rec: dict[str, Any] | None, threshold: float, elapsed_s: float | None = None) -> View:
    """The page's outputs for one predictions record (`answer_image`'s) at `threshold`; never raises on a record
    with `error`, without an answer or without a score. None (nothing asked yet) shows the placeholder."""
    if rec is None:
        return View(f'<div id="{RESULT_ID}" data-state="empty"><p>{html.escape(_PLACEHOLDER)}</p></div>', None, "")
    label = answer_label(rec)
    raw = rec.get("raw") or ""
    e = html.escape
    if label == "failed":
        body = (f'<div class="verdict" style="color:{_COLORS["failed"]};font-weight:bold">Failed: '
                f"{e(str(rec.get('error')))}</div><p>No answer and no score for this image.</p>")  # fmt: skip
        return View(_panel(label, None, body), None, raw)
    score, call = score_of(rec), threshold_call(rec, threshold)
    source = "P(defect)" if rec.get("p_defect") is not None else "P(yes)"
    if call is None:
        verdict = (
            f'<div class="call" style="font-weight:bold">No decision score (no answer to score in the reply, or a '
            f"backend without probabilities): no call at threshold {threshold:.2f}; the model's own answer is "
            f"{e(label)}.</div>"
        )
    else:
        sign = "&ge;" if call == "defective" else "&lt;"
        verdict = (
            f'<div class="call" style="font-size:1.3em;font-weight:bold;color:{_COLORS[call]}">{e(call.capitalize())}'
            f" at threshold {threshold:.2f}</div><div>score {score:.3f} ({source}) {sign} {threshold:.2f}</div>"
        )
    answer = f'<div class="answer">Model\'s answer: <b style="color:{_COLORS[label]}">{e(label)}</b>'
    answer += f" &middot; P(yes) {_fmt(rec.get('p_yes'))}"
    if rec.get("p_defect") is not None:
        answer += f" &middot; P(defect) {_fmt(rec.get('p_defect'))}"
    answer += "</div>"
    if label == "no answer":
        answer += "<div>The reply has no &lt;answer&gt; tag the parser reads (see the raw reply below).</div>"
    details = ""
    if label == "defective":
        cell = named_cell(rec)
        where = f"cell {cell}: {GRID_WORDS[cell - 1]}, framed in yellow" if cell is not None else "names no cell"
        details = (
            f'<div class="defect">Type: <b>{e(rec.get("type") or "-")}</b> &middot; Location: '
            f"<b>{e(rec.get('location') or '-')}</b> ({e(where)})</div>"
        )
    reasoning = rec.get("reasoning")
    details += f'<p class="reasoning"><b>Reasoning:</b> {e(reasoning) if reasoning else "(none)"}</p>'
    if rec.get("reference"):
        details += f"<div style='color:#666'>one-shot, reference {e(Path(str(rec['reference'])).name)}</div>"
    if elapsed_s is not None:
        details += f"<div style='color:#666'>answered in {elapsed_s:.2f} s</div>"
    image = None
    try:
        from PIL import Image

        with Image.open(str(rec.get("image"))) as im:
            image = draw_cell(im, named_cell(rec))
    except Exception:  # showing the answer matters more than showing the picture
        details += "<div>(the image could not be shown)</div>"
    return View(_panel(label, call, verdict + answer + details), image, raw)


def _panel(label: str, call: str | None, body: str) -> str:
    attrs = f'data-state="done" data-answer="{html.escape(label)}" data-call="{html.escape(call or "none")}"'
    return f'<div id="{RESULT_ID}" {attrs}>{body}</div>'


def ask(
    engine: Backend, icfg: InferConfig, image: str | os.PathLike | None, reference: str | os.PathLike | None
) -> tuple[dict[str, Any] | None, float]:
    """(record, seconds) of one image through the open backend; an exception from the backend becomes a record
    with `error` (the page shows it and keeps serving). No image: (None, 0)."""
    from iadr1.infer.predict import answer_image

    if image is None:
        return None, 0.0
    t0 = time.perf_counter()
    try:
        rec = answer_image(engine, icfg, image, reference)
    except Exception as exc:  # the page must answer the next request too
        rec = {"image": str(image), "answer": None, "raw": None, "error": f"{type(exc).__name__}: {exc}"}
    return rec, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------------
# The page (Gradio)
# ---------------------------------------------------------------------------------------------------------------
def _gradio() -> Any:
    """The gradio module, or a one-line `ConfigError` naming the extra that installs it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a factory's network
    try:
        import gradio
    except ImportError as exc:
        raise ConfigError(f"iadr1 app needs gradio ({exc}): pip install 'iadr1[app]'") from None
    return gradio


def build_app(
    engine: Backend,
    icfg: InferConfig,
    threshold: float = DEFAULT_THRESHOLD,
    default_reference: str | os.PathLike | None = None,
    examples: Sequence[str | os.PathLike] = (),
    title: str | None = None,
) -> Any:
    """The page as a `gradio.Blocks` (not launched: `launch_app`). `engine` is an open backend, used for every
    request (one at a time); `default_reference` fills the reference slot at start (the user may clear or replace
    it); `examples` are image files offered under the upload slot."""
    gr = _gradio()
    name = title or f"iadr1: {Path(icfg.model).name or icfg.model}"
    # Uploads are copied into Gradio's cache (GRADIO_TEMP_DIR, else TMP/gradio): hourly, those older than a day go.
    with gr.Blocks(title=name, analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(
            f"## {html.escape(name)}\nDefect or not, where (a 3x3 cell) and what kind, with the model's reasoning. "
            "Optional: a normal image of the same part as reference (one-shot prompt)."
        )
        state = gr.State(None)
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                 elem_id="iadr1-image", height=320)  # fmt: skip
                reference = gr.Image(
                    label="Normal reference (optional)", type="filepath", image_mode=None,
                    sources=["upload", "clipboard"], elem_id="iadr1-reference", height=200,
                    value=None if default_reference is None else str(default_reference),
                )  # fmt: skip
                slider = gr.Slider(0.0, 1.0, value=threshold, step=0.01, label="Threshold on the decision score",
                                   elem_id="iadr1-threshold")  # fmt: skip
                button = gr.Button("Inspect", variant="primary", elem_id="iadr1-inspect")
                if examples:
                    gr.Examples(
                        [[str(p)] for p in examples], inputs=[image], label="Examples", elem_id="iadr1-examples"
                    )
            with gr.Column():
                panel = gr.HTML(render(None, threshold).html, elem_id="iadr1-panel")
                shown = gr.Image(label="Image, the named cell framed", type="pil", format="png", interactive=False,
                                 elem_id="iadr1-overlay", height=320)  # fmt: skip
                with gr.Accordion("Raw reply", open=False, elem_id="iadr1-raw-accordion"):
                    raw = gr.Textbox(show_label=False, lines=6, max_lines=30, interactive=False, elem_id="iadr1-raw")

        def on_inspect(img: str | None, ref: str | None, thr: float) -> tuple[Any, ...]:
            rec, elapsed = ask(engine, icfg, img, ref)
            if rec is None:
                return (None, *render(None, thr))
            return (rec | {"app_elapsed_s": elapsed}, *render(rec, thr, elapsed))

        def on_threshold(rec: dict[str, Any] | None, thr: float) -> tuple[Any, ...]:
            return tuple(render(rec, thr, None if rec is None else rec.get("app_elapsed_s")))

        button.click(on_inspect, [image, reference, slider], [state, panel, shown, raw], concurrency_limit=1,
                     concurrency_id="model")  # fmt: skip
        slider.change(on_threshold, [state, slider], [panel, shown, raw], show_progress="hidden")
    return demo


def free_port(host: str) -> int:
    """A port the OS says is free on `host` now (for `--port 0`)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def launch_app(
    demo: Any,
    host: str = "127.0.0.1",
    port: int = 7860,
    allowed_paths: Sequence[str | os.PathLike] = (),
    quiet: bool = True,
) -> str:
    """Start `demo`'s server in the background and return its local URL (`demo.close()` stops it). Port 0: any
    free port. System fonts only (the page must load where the internet cannot be reached)."""
    gr = _gradio()
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # fmt: skip
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(
        server_name=host, server_port=port or free_port(host), prevent_thread_lock=True, quiet=quiet,
        allowed_paths=[str(Path(p).resolve()) for p in allowed_paths], theme=theme, footer_links=[],
        ssr_mode=False, inbrowser=False, share=False,
    )  # fmt: skip
    return str(url)


def run_app(
    icfg: InferConfig,
    threshold: float = DEFAULT_THRESHOLD,
    host: str = "127.0.0.1",
    port: int = 7860,
    reference: str | os.PathLike | None = None,
    examples: Sequence[str | os.PathLike] = (),
    on_message: Callable[[str], None] | None = None,
) -> None:
    """`iadr1 app`: check the inputs, open the backend once, serve the page until interrupted, close the backend."""
    from iadr1.data.io import check_image
    from iadr1.errors import DataError
    from iadr1.infer.predict import find_images
    from iadr1.infer.runner import make_backend

    say = on_message or (lambda _note: None)
    _gradio()  # a missing extra fails before the model loads
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold {threshold}: must be between 0 and 1")
    if icfg.backend != "openai" and not (Path(icfg.model) / "config.json").is_file():
        raise ConfigError(f"--model {icfg.model}: not a checkpoint folder (no config.json)")
    if reference is not None and (problem := check_image(reference)):
        raise DataError(f"--reference {reference}: {problem}")
    example_files = find_images(examples) if examples else []
    with make_backend(icfg) as engine:
        for note in engine.notes:
            say(note)
        demo = build_app(engine, icfg, threshold, reference, example_files)
        # The reference and the examples are copied into Gradio's cache as the page is built: no folder of this
        # machine is served (`allowed_paths` would serve every file below it to whoever reaches the page).
        url = launch_app(demo, host, port, quiet=True)
        say(f"iadr1 app: {url}  (model {icfg.model}, backend {icfg.backend}; Ctrl-C stops)")
        try:
            demo.block_thread()
        finally:
            demo.close()
