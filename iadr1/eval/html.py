"""report.html: one self-contained file (no external resources) with the tables, the plots and a gallery of the
misjudged images, filterable by dataset, class and error kind."""

from __future__ import annotations

import base64
import html
import io
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from iadr1.data.io import atomic_write_text, resolve_under
from iadr1.errors import DataError
from iadr1.eval import metrics as M
from iadr1.eval.pipeline import EvalResult

THUMB_PX = 192
REASONING_CHARS = 800
ERROR_KINDS = {
    "overkill": "normal image answered defective",
    "miss": "defective image answered normal",
    "unanswered": "no usable answer (or no prediction)",
    "misplaced": "defect found, at the wrong location",
    "misnamed": "defect found, of the wrong type (location right or not judged)",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
.scroll{overflow-x:auto;max-width:100%}.confusions{display:flex;flex-wrap:wrap;gap:18px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}th{background:#f3f3f3}
td:first-child,th:first-child,td.name{text-align:left}tr.avg td{font-weight:bold;background:#fafafa}
.meta,.notes{font-size:13px;color:#555}.notes li{margin:2px 0}
img.plot{max-width:100%;border:1px solid #eee;margin:6px 0}
.filters{display:flex;gap:16px;align-items:center;font-size:14px;margin:8px 0}
#gallery{display:flex;flex-wrap:wrap;gap:12px}
.card{width:220px;border:1px solid #ddd;border-radius:6px;padding:8px;margin:0;font-size:12px;background:#fff}
.card img.thumb{display:block;max-width:200px;max-height:200px;margin:0 auto 6px}
.placeholder{width:200px;height:120px;display:flex;align-items:center;justify-content:center;background:#eee;
  color:#777;margin:0 auto 6px;border-radius:4px}
.kind{display:inline-block;padding:1px 6px;border-radius:8px;color:#fff;font-size:11px}
.kind.overkill{background:#d9822b}.kind.miss{background:#c23030}.kind.unanswered{background:#5c7080}
.kind.misplaced{background:#8f398f}.kind.misnamed{background:#2b6cb0}
.path{word-break:break-all;color:#333}.reasoning{color:#444;margin-top:4px;white-space:pre-wrap;
  max-height:160px;overflow:auto}
"""

_JS = """
(function(){
  const sel = id => document.getElementById(id);
  const cards = Array.from(document.querySelectorAll('#gallery .card'));
  function apply(){
    const d = sel('f-dataset').value, c = sel('f-class').value, k = sel('f-kind').value;
    let shown = 0;
    for (const card of cards){
      const ok = (!d || card.dataset.dataset === d) && (!c || card.dataset.class === c)
        && (!k || card.dataset.kind === k);
      card.style.display = ok ? '' : 'none';
      if (ok) shown++;
    }
    sel('gallery-count').textContent = shown + ' of ' + cards.length + ' shown';
  }
  for (const id of ['f-dataset','f-class','f-kind']) sel(id).addEventListener('change', apply);
  apply();
})();
"""

_COLUMNS = (
    ("n", "images", 0),
    ("n_anomalous", "anomalous", 0),
    ("balanced_accuracy", "bal. acc.", 2),
    ("ci95", "95% CI", 1),
    ("overkill", "overkill", 2),
    ("miss", "miss", 2),
    ("type_accuracy", "type acc.", 2),
    ("location_accuracy", "location acc.", 2),
    ("accuracy", "accuracy", 2),
    ("precision", "precision", 2),
    ("recall", "recall", 2),
    ("f1", "F1", 2),
    ("unanswered_rate", "unanswered", 2),
    ("consistency_rate", "consistency", 2),
    ("auroc", "AUROC", 2),
    ("aupr", "AUPR", 2),
)


def _cell(d: dict[str, Any], key: str, digits: int) -> str:
    if key == "ci95":
        ci = (d.get("ci95") or {}).get("balanced_accuracy")
        return f"{ci[0]:.1f}&ndash;{ci[1]:.1f}" if ci and None not in ci else "&ndash;"
    v = d.get(key)
    if v is None:
        return "&ndash;"
    text = str(v) if digits == 0 else f"{v:.{digits}f}"
    from iadr1.eval.report import partial_coverage

    cover = partial_coverage(d)
    if key in ("auroc", "aupr") and cover is not None:
        text += f" ({cover:.0f}% scored)"  # ranked over the images that had a P(yes) only
    return text


def _table(rows: list[tuple[list[str], dict[str, Any], str]], first_cols: list[str], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in first_cols)
    head += "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in _COLUMNS)
    body = []
    for names, d, cls in rows:
        cells = "".join(f'<td class="name">{html.escape(n)}</td>' for n in names)
        cells += "".join(f"<td>{_cell(d, k, digits)}</td>" for k, _, digits in _COLUMNS)
        body.append(f'<tr class="{cls}">{cells}</tr>')
    return (
        f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _confusions(result: EvalResult) -> str:
    """One confusion matrix per dataset: truth (defective, normal) against the answer (yes, no, none)."""
    blocks = []
    for name, d in result.datasets.items():
        c = d["confusion"]
        rows = "".join(
            f'<tr><td class="name">{label}</td><td>{c[truth]["yes"]}</td><td>{c[truth]["no"]}</td>'
            f"<td>{c[truth]['unanswered']}</td></tr>"
            for truth, label in (("anomalous", "defective"), ("normal", "normal"))
        )
        blocks.append(
            f'<div><b>{html.escape(name)}</b><table class="confusion" data-dataset="{html.escape(name)}">'
            "<thead><tr><th>truth \\ answer</th><th>yes</th><th>no</th><th>none</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>"
        )
    return f'<div class="confusions">{"".join(blocks)}</div>'


_SPECIE_COLUMNS = (
    ("n", "images", 0),
    ("accuracy", "accuracy", 2),
    ("location_accuracy", "location acc.", 2),
    ("type_accuracy", "type acc.", 2),
)


def _species_table(result: EvalResult) -> str:
    """Accuracy per dataset and defect kind (`pipeline.per_specie`): `good` is the normal images."""
    names = ("dataset", "type", *(label for _, label, _ in _SPECIE_COLUMNS))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in names)
    body = []
    for ds, d in result.datasets.items():
        for sp, row in d.get("species", {}).items():
            cells = f'<td class="name">{html.escape(ds)}</td><td class="name">{html.escape(sp)}</td>'
            cells += "".join(f"<td>{_cell(row, k, digits)}</td>" for k, _, digits in _SPECIE_COLUMNS)
            body.append(f"<tr>{cells}</tr>")
    return (
        f'<div class="scroll"><table id="species"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _operating_section(result: EvalResult) -> str:
    """The --target-miss operating points (`iadr1.eval.threshold`): threshold, Miss and Overkill per dataset and
    for all images, with 95% intervals and where the threshold was chosen."""
    op = result.operating
    if op is None:
        return ""
    from iadr1.eval.report import _score_name

    def val(p: dict[str, Any], key: str, digits: int) -> str:
        v = p.get(key)
        if v is None:
            return "unreachable" if key == "threshold" and not p["reachable"] else "&ndash;"
        lo_hi = (p.get("ci95") or {}).get(key)
        ci = f" ({lo_hi[0]:.{digits}f}&ndash;{lo_hi[1]:.{digits}f})" if lo_hi and None not in lo_hi else ""
        return f"{v:.{digits}f}{ci}"

    body = []
    for name, points in [*op["datasets"].items(), ("all images", op["overall"])]:
        for p in points:
            cls = ' class="avg"' if name == "all images" else ""
            body.append(
                f'<tr{cls}><td class="name">{html.escape(name)}</td><td>{p["target_miss"] * 100:g}</td>'
                f"<td>{val(p, 'threshold', 3)}</td><td>{val(p, 'miss', 2)}</td><td>{val(p, 'overkill', 2)}</td>"
                f"<td>{p['n_without_score']}</td></tr>"
            )
    chosen = next((p["chosen_on"] for p in op["overall"]), "this data")
    where = (
        "chosen on the calibration set (" + ", ".join(html.escape(Path(f).name) for f in result.run["calibrate_on"])
        + ") and reported here"
        if chosen == "calibration"
        else "<b>chosen on the data it is reported on</b> (give a validation set with --calibrate-on for an "
        "unbiased Overkill)"
    )  # fmt: skip
    src = op["score"]
    head = "".join(f"<th>{c}</th>" for c in ("dataset", "target miss", "threshold T", "miss", "overkill", "no score"))
    return (
        f'<h2>Operating points</h2><p class="meta">An image is called defective when its decision score '
        f"({_score_name(result)}; {src['p_defect']} images scored by P(defect), {src['p_yes']} by P(yes), "
        f"{src['none']} without a score, which count wrong at every threshold) is at least T. T is the highest "
        f"threshold that misses at most the target share of defects, {where}. 95% intervals from a stratified "
        f'bootstrap.</p><table id="operating"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def _mmad_section(result: EvalResult) -> str:
    """MMAD's accuracy per question type and dataset, both conventions, labelled."""
    mmad = result.mmad
    if mmad is None:
        return ""
    cols = [*mmad["types"], "average"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["dataset", "rule", *mmad["types"], "average"])
    body = []
    for name, d in [*mmad["datasets"].items(), ("Average", mmad["average"])]:
        for rule, label in (("iadr1", "iadr1"), ("mmad", "MMAD")):
            cells = "".join(f"<td>{'&ndash;' if d[rule].get(c) is None else f'{d[rule][c]:.1f}'}</td>" for c in cols)
            cls = ' class="avg"' if name == "Average" else ""
            body.append(f'<tr{cls}><td class="name">{html.escape(name)}</td><td class="name">{label}</td>{cells}</tr>')
    return (
        '<h2>MMAD questions</h2><p class="meta">Accuracy (%) per question type (Anomaly Detection: balanced '
        "accuracy), averaged over the types, then over datasets. <b>iadr1</b>: a question without a usable answer "
        "(none, an error, a reply naming no option) counts wrong; <b>MMAD</b>: such answers are dropped, as MMAD's "
        f"scorer does (comparable with its published figures). {mmad['n_answered']} of {mmad['n_questions']} "
        f'questions answered.</p><div class="scroll"><table id="mmad"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _thumbnail(image_root: str | os.PathLike | None, image: str) -> str | None:
    """A base64 JPEG data URI of the image shrunk to THUMB_PX, or None when it cannot be shown."""
    if image_root is None:
        return None
    from PIL import Image

    try:
        path = resolve_under(image_root, image, "image")
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
    except (OSError, SyntaxError, ValueError, DataError):
        return None  # missing or unreadable: the gallery shows a placeholder
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def misjudged(result: EvalResult) -> list[dict[str, Any]]:
    """Every misjudged image: index, image, dataset, class, kind (`ERROR_KINDS`): overkill, miss, unanswered, and
    defects found at the wrong location (misplaced) or of the wrong type (misnamed; an image wrong in both is
    misplaced, its card says both)."""
    gt, m = result.gt, result.matched
    code = m.letter_code
    kinds = np.full(len(gt), "", dtype=object)
    found = (code == M.YES) & gt.anomalous
    if len(result.type_ok):
        kinds[found & (result.type_ok == 0)] = "misnamed"
    if len(result.location_ok):
        kinds[found & (result.location_ok == 0)] = "misplaced"
    kinds[(code == M.UNANSWERED)] = "unanswered"
    kinds[(code == M.YES) & ~gt.anomalous] = "overkill"
    kinds[(code == M.NO) & gt.anomalous] = "miss"
    out = []
    for i in np.flatnonzero(kinds != "").tolist():
        ds, cls = gt.classes[gt.class_idx[i]]
        out.append({"index": i, "image": gt.images[i], "dataset": ds, "class": cls, "kind": kinds[i]})
    return out


def _select(items: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """At most `limit` items, taken in turn from each (dataset, class, kind) so that every group shows."""
    if len(items) <= limit:
        return items
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        groups[(it["dataset"], it["class"], it["kind"])].append(it)
    queues = [groups[k] for k in sorted(groups)]
    chosen: list[dict[str, Any]] = []
    depth = 0
    while len(chosen) < limit:
        for q in queues:
            if depth < len(q) and len(chosen) < limit:
                chosen.append(q[depth])
        depth += 1
    return sorted(chosen, key=lambda it: (it["dataset"], it["class"], it["kind"], it["image"]))


def _card(result: EvalResult, it: dict[str, Any], image_root: str | os.PathLike | None) -> str:
    from iadr1.answers import parse

    i = it["index"]
    raw = result.matched.raw(i)
    truth = "defective" if result.gt.anomalous[i] else "normal"
    said = {M.YES: "yes", M.NO: "no", M.UNANSWERED: "unanswered"}[int(result.matched.letter_code[i])]
    if not result.matched.has_prediction[i]:
        reasoning = "(no prediction for this image)"
    elif raw:
        reply = parse(raw)
        reasoning = reply.reasoning or raw
        if reply.type or reply.location:
            reasoning += f"\n[type: {reply.type or '-'}; location: {reply.location or '-'}]"
    else:
        reasoning = "(no reply text)"
    if len(reasoning) > REASONING_CHARS:
        reasoning = reasoning[:REASONING_CHARS] + "…"
    found = ""
    if it["kind"] in ("misplaced", "misnamed"):
        reply = parse(raw) if raw else None
        gt_loc, gt_type = result.gt.defects.get(i, (None, None))
        said_loc, said_type = (reply.location, reply.type) if reply else (None, None)
        found = (
            f"<div>location: {html.escape(said_loc or '-')} (truth {html.escape(gt_loc or '-')}); "
            f"type: {html.escape(said_type or '-')} (truth {html.escape(gt_type or '-')})</div>"
        )
    uri = _thumbnail(image_root, it["image"])
    pic = (
        f'<img class="thumb" src="{uri}" alt="{html.escape(it["image"])}">'
        if uri
        else '<div class="placeholder">image not available</div>'
    )
    e = html.escape
    return (
        f'<figure class="card" data-dataset="{e(it["dataset"])}" data-class="{e(it["dataset"] + "/" + it["class"])}"'
        f' data-kind="{it["kind"]}">{pic}<figcaption><span class="kind {it["kind"]}">{it["kind"]}</span> '
        f'truth: {truth}, answer: {said}{found}<div class="path">{e(it["image"])}</div>'
        f'<div class="reasoning">{e(reasoning)}</div></figcaption></figure>'
    )


def _options(values: list[tuple[str, str]], label: str, select_id: str) -> str:
    opts = "".join(f'<option value="{html.escape(v)}">{html.escape(t)}</option>' for v, t in values)
    return f'<label>{label} <select id="{select_id}"><option value="">all</option>{opts}</select></label>'


def render_html(
    result: EvalResult,
    image_root: str | os.PathLike | None = None,
    gallery_max: int = 300,
    plots: list[Path] | None = None,
) -> str:
    """The report as one HTML string; images (plots, thumbnails) are embedded as data URIs."""
    e = html.escape
    run = result.run
    title = "iadr1 evaluation" + (f": {run['name']}" if run.get("name") else "")
    labels = "path rule (compat: normal when &quot;good&quot; is in the path)" if run["compat"] else "test file answers"
    meta = (
        f"{run['n_images']} test images from {', '.join(e(Path(f).name) for f in run['test_files'])}; "
        f"{run['n_predictions']} predictions from {', '.join(e(Path(f).name) for f in run['predictions'])}. "
        f"Labels: {labels}. "
        f"Rates in percent; 95% intervals from {run['bootstrap']} bootstrap replicates (seed {run['seed']})."
    )
    notes = "".join(f"<li><b>warning:</b> {e(w)}</li>" for w in result.warnings)
    notes += "".join(f"<li>{e(n)}</li>" for n in result.notes)
    ds_rows = [([name], d, "") for name, d in result.datasets.items()]
    ds_rows.append((["Average"], result.average, "avg"))
    cls_rows = [([ds, cls], c, "") for ds, d in result.datasets.items() for cls, c in d["classes"].items()]
    plot_html = "".join(
        f'<img class="plot" alt="{e(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode("ascii")}">'
        for p in plots or []
    )
    wrong = misjudged(result)
    shown = _select(wrong, gallery_max)
    cards = "".join(_card(result, it, image_root) for it in shown)
    datasets = sorted({it["dataset"] for it in shown})
    classes = sorted({(it["dataset"] + "/" + it["class"]) for it in shown})
    filters = (
        _options([(d, d) for d in datasets], "dataset", "f-dataset")
        + _options([(c, c) for c in classes], "class", "f-class")
        + _options([(k, k) for k in ERROR_KINDS], "error", "f-kind")
    )
    legend = "; ".join(f'<span class="kind {k}">{k}</span> {e(v)}' for k, v in ERROR_KINDS.items())
    cap = (
        f" (showing {len(shown)} of {len(wrong)}, spread over datasets, classes and kinds)"
        if len(shown) < len(wrong)
        else ""
    )
    if image_root is None:
        cap += "; thumbnails need --image-root"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{e(title)}</h1>
<p class="meta">{meta}</p>
{f'<ul class="notes">{notes}</ul>' if notes else ""}
<h2>Datasets</h2>
{_table(ds_rows, ["dataset"], "datasets")}
{_operating_section(result)}
{_mmad_section(result)}
<h2>Plots</h2>
{plot_html or '<p class="meta">plots not written</p>'}
<h2>Confusion matrices</h2>
{_confusions(result)}
<h2>Classes</h2>
{_table(cls_rows, ["dataset", "class"], "classes")}
<h2>Defect types</h2>
<p class="meta">Accuracy on each kind of image (good: the normal ones); location and type accuracy on detected
defects with ground truth.</p>
{_species_table(result)}
<h2>Misjudged images</h2>
<p class="meta">{len(wrong)} misjudged{e(cap)}. {legend}.</p>
<div class="filters">{filters}<span id="gallery-count"></span></div>
<div id="gallery">{cards}</div>
<script>{_JS}</script>
</body></html>
"""


def write_html(
    result: EvalResult,
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    gallery_max: int = 300,
    plots: list[Path] | None = None,
) -> Path:
    return atomic_write_text(path, render_html(result, image_root, gallery_max, plots))
