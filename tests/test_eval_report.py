"""`iadr1 eval` outputs: the original's CSV layout, metrics.json, the CLI, `eval compare`, report.html in Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import missing
from PIL import Image
from test_eval_load import ANSWERS, LABELS, ours, write_jsonl, write_test_file

from iadr1.cli import main
from iadr1.eval.report import accuracy_csv_text


def sdd_predictions(shared_data: Path, path: Path) -> Path:
    """Predictions on the real SDD test file with 45/54 anomalous and 248/286 normal images right."""
    test = json.loads((shared_data / "test_SDD_format.json").read_text())
    anomalous = [k for k, v in test.items() if v["conversation"][0]["Answer"] == "A"]
    normal = [k for k, v in test.items() if v["conversation"][0]["Answer"] == "B"]
    rows = [ours(k, "A" if i < 45 else "B") for i, k in enumerate(anomalous)]
    rows += [ours(k, "B" if i < 248 else "A") for i, k in enumerate(normal)]
    return write_jsonl(path, rows)


def run_cli(*args: str | Path) -> None:
    main([str(a) for a in args])


def test_sdd_csv_is_the_shared_example_byte_for_byte(shared_data, tmp_path):
    pred = sdd_predictions(shared_data, tmp_path / "p.jsonl")
    run_cli(
        "eval",
        "-t",
        shared_data / "test_SDD_format.json",
        "-p",
        pred,
        "-o",
        tmp_path / "out",
        "--bootstrap",
        "0",
        "--no-plots",
    )
    expected = (shared_data / "example_answers_0_shot_accuracy.csv").read_text()
    got = (tmp_path / "out" / "accuracy.csv").read_text()
    assert got.splitlines()[0] == ",Anomaly Detection,Average"
    assert [line.split(",")[0] for line in got.splitlines()] == ["", "SDD", "Average"]
    assert got == expected


def test_csv_layout_several_datasets():
    text = accuracy_csv_text({"DAGM": 95.40806999499848, "SDD": 85.0})
    assert text.splitlines() == [
        ",Anomaly Detection,Average",
        "DAGM,95.40806999499848,95.40806999499848",
        "SDD,85.0,85.0",
        f"Average,{(95.40806999499848 + 85.0) / 2!r},{(95.40806999499848 + 85.0) / 2!r}",
    ]


@pytest.fixture
def two_shards(tmp_path: Path) -> dict[str, Path]:
    test = write_test_file(tmp_path / "test_DS_format.json", LABELS)
    rows = [ours(k, v, p_yes=0.9 if v == "A" else 0.1) for k, v in ANSWERS.items()]
    return {
        "test": test,
        "s1": write_jsonl(tmp_path / "shard0.jsonl", rows[:5]),
        "s2": write_jsonl(tmp_path / "shard1.jsonl", rows[5:]),
    }


def test_cli_writes_every_output(two_shards, tmp_path, capsys):
    out = tmp_path / "out"
    # Several values after one --predictions (as a shell glob expands them).
    run_cli(
        "eval",
        "--test-file",
        two_shards["test"],
        "--predictions",
        two_shards["s1"],
        two_shards["s2"],
        "--out",
        out,
        "--bootstrap",
        "100",
        "--name",
        "run-a",
    )
    for name in ("metrics.json", "accuracy.csv", "heatmap.png", "classes.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    m = json.loads((out / "metrics.json").read_text())
    ds = m["datasets"]["DS"]
    assert ds["balanced_accuracy"] == (5 / 7 + 3 / 5) / 2 * 100
    assert set(ds["classes"]) == {"c1", "c2"} and ds["classes"]["c2"]["balanced_accuracy"] == 100.0
    for key in (
        "overkill",
        "miss",
        "f1",
        "precision",
        "recall",
        "accuracy",
        "unanswered_rate",
        "consistency_rate",
        "auroc",
        "aupr",
        "confusion",
        "ci95",
    ):
        assert key in ds, key
    assert m["average"]["balanced_accuracy"] == ds["balanced_accuracy"]
    assert m["run"]["name"] == "run-a" and m["run"]["missing"]["count"] == 1 and m["run"]["warnings"] == []
    assert {sp: d["accuracy"] for sp, d in ds["species"].items()} == {"good": 5 / 7 * 100, "bad": 60.0}
    printed = capsys.readouterr().out
    assert "DS" in printed and "Average" in printed and "without a prediction" in printed
    assert "per defect type" in printed and "warning" not in printed
    with Image.open(out / "heatmap.png") as im:
        assert im.width > 300 and im.height > 100


def test_cli_errors_are_one_line(two_shards, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli("eval", "-t", two_shards["test"], "-p", two_shards["s1"])
    assert e.value.code == 1 and "--out DIR is required" in capsys.readouterr().err
    dup = write_jsonl(tmp_path / "dup.jsonl", [ours("DS/c2/test/good/0.png", "B")])
    with pytest.raises(SystemExit):
        run_cli("eval", "-t", two_shards["test"], "-p", two_shards["s2"], dup, "-o", tmp_path / "o")
    err = capsys.readouterr().err
    assert "two predictions for image 'DS/c2/test/good/0.png'" in err and "Traceback" not in err


def test_cli_warns_when_no_annotation_names_a_test_image(two_shards, tmp_path, capsys):
    ann = write_jsonl(tmp_path / "ann.jsonl", [{"image": "OTHER/c1/test/bad/0.png", "location": "top"}])
    out = tmp_path / "out"
    run_cli("eval", "-t", two_shards["test"], "-p", two_shards["s1"], two_shards["s2"], "--annotations", ann,
            "-o", out, "--bootstrap", "0", "--no-plots")  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "none of the 1 annotations in" in lines[0] and "'OTHER/c1/test/bad/0.png'" in lines[0]
    m = json.loads((out / "metrics.json").read_text())
    assert m["run"]["warnings"] == [lines[0].removeprefix("warning: ")]
    assert "none of the 1 annotations" in (out / "report.html").read_text()


def test_compare_table(two_shards, tmp_path, capsys, shared_data):
    run_cli(
        "eval",
        "-t",
        two_shards["test"],
        "-p",
        two_shards["s1"],
        two_shards["s2"],
        "-o",
        tmp_path / "a",
        "--bootstrap",
        "0",
        "--no-plots",
    )
    pred = sdd_predictions(shared_data, tmp_path / "sdd.jsonl")
    run_cli(
        "eval",
        "-t",
        shared_data / "test_SDD_format.json",
        "-t",
        two_shards["test"],
        "-p",
        pred,
        two_shards["s1"],
        two_shards["s2"],
        "-o",
        tmp_path / "b",
        "--bootstrap",
        "0",
        "--no-plots",
        "--name",
        "both",
    )
    run_cli("eval", "compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "cmp")
    ds = (5 / 7 + 3 / 5) / 2 * 100
    sdd = 85.02331002331003
    md = (tmp_path / "cmp" / "compare.md").read_text().splitlines()
    assert md == [
        "| run | DS | SDD | Average |",
        "|---|---|---|---|",
        f"| a | {ds:.1f} |  | {ds:.1f} |",
        f"| both | {ds:.1f} | {sdd:.1f} | {(ds + sdd) / 2:.1f} |",
    ]
    csv = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()
    assert csv[0] == ",DS,SDD,Average"
    assert csv[2] == f"both,{ds!r},{sdd!r},{(ds + sdd) / 2!r}"
    assert "both" in capsys.readouterr().out


# --- report.html -----------------------------------------------------------------------------------------------
@pytest.fixture
def report(two_shards, tmp_path) -> Path:
    """A report whose gallery has thumbnails for every misjudged image but one (a placeholder)."""
    root = tmp_path / "images"
    wrong = [
        "DS/c1/test/bad/2.png",
        "DS/c1/test/bad/3.png",
        "DS/c1/test/good/3.png",
    ]  # miss, unanswered, overkill
    for i, rel in enumerate(wrong):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64 + 16 * i, 48), (40 * i, 120, 200)).save(root / rel)
    # DS/c1/test/good/4.png (no prediction: unanswered) has no file: placeholder
    run_cli(
        "eval",
        "-t",
        two_shards["test"],
        "-p",
        two_shards["s1"],
        two_shards["s2"],
        "-o",
        tmp_path / "out",
        "--image-root",
        root,
        "--bootstrap",
        "50",
    )
    return tmp_path / "out" / "report.html"


def test_report_html_content(report):
    text = report.read_text()
    assert 'src="http' not in text and "<link" not in text  # self-contained
    cards = re.findall(r'<figure class="card" data-dataset="DS" data-class="([^"]+)" data-kind="(\w+)"', text)
    assert sorted(cards) == sorted(
        [("DS/c1", "miss"), ("DS/c1", "unanswered"), ("DS/c1", "overkill"), ("DS/c1", "unanswered")]
    )
    assert text.count('class="thumb"') == 3 and text.count('class="placeholder"') == 1
    assert "(no prediction for this image)" in text
    assert html.escape("a dark line") in text  # the model's reasoning of the overkill
    assert '<table id="datasets">' in text and '<table id="classes">' in text and '<table id="species">' in text
    # heatmap, classes, and the decision score's ROC and Miss/Overkill-against-threshold (the rows carry p_yes)
    assert re.findall(r'<img class="plot" alt="(\w+)"', text) == ["heatmap", "classes", "roc", "threshold"]


CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.querySelectorAll('img'));
  const kind = document.getElementById('f-kind');
  kind.value = 'unanswered'; kind.dispatchEvent(new Event('change'));
  const visible = Array.from(document.querySelectorAll('#gallery .card')).filter(c => c.style.display !== 'none');
  const out = document.createElement('pre');
  out.id = 'check';
  out.textContent = JSON.stringify({
    images: imgs.map(i => ({cls: i.className, w: i.naturalWidth, complete: i.complete})),
    rows: document.querySelectorAll('#datasets tbody tr').length,
    classRows: document.querySelectorAll('#classes tbody tr').length,
    species: Array.from(document.querySelectorAll('#species tbody tr')).map(r => r.cells[1].textContent),
    firstCell: document.querySelector('#datasets tbody td').textContent,
    unansweredShown: visible.length,
    count: document.getElementById('gallery-count').textContent,
    width: window.innerWidth,
    typeLocRight: Array.from(document.querySelectorAll('#datasets th'))
      .filter(th => /type acc|location acc/.test(th.textContent)).map(th => th.getBoundingClientRect().right),
  });
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = _chromium()
    if browser is None:
        missing("chromium not installed (`make install` installs Debian's package `chromium` when root)")
    page = tmp_path / "check.html"
    page.write_text(report.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--window-size=1200,900",
        "--dump-dom",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    m = re.search(r'<pre id="check">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"no check output; chromium said: {proc.stderr[-2000:]}"
    check = json.loads(html.unescape(m.group(1)))
    assert check["rows"] == 2 and check["firstCell"] == "DS"  # DS and Average
    assert check["classRows"] == 2 and check["species"] == ["good", "bad"]
    thumbs = [i for i in check["images"] if i["cls"] == "thumb"]
    plots = [i for i in check["images"] if i["cls"] == "plot"]
    assert len(thumbs) == 3 and all(i["complete"] and i["w"] > 0 for i in thumbs)
    assert {i["w"] for i in thumbs} == {64, 80, 96}  # thumbnails of the real files, decoded
    assert len(plots) == 4 and all(i["w"] > 300 for i in plots)  # heatmap, classes, ROC, threshold
    assert check["unansweredShown"] == 2 and check["count"] == "2 of 4 shown"  # the filter works
    # Type and location accuracy are in view at 1200 px, not cut off at the table's right end.
    assert check["width"] == 1200 and len(check["typeLocRight"]) == 2 and max(check["typeLocRight"]) < 1200


def test_multi_value_options_expand():
    from iadr1.cli.eval import expand_multi_values

    args = ["-t", "t1", "t2", "--predictions", "a", "b", "-o", "d", "--compat-labels"]
    assert expand_multi_values(args) == [
        "-t",
        "t1",
        "-t",
        "t2",
        "--predictions",
        "a",
        "--predictions",
        "b",
        "-o",
        "d",
        "--compat-labels",
    ]
    assert expand_multi_values(["--predictions=a", "b"]) == ["--predictions=a", "--predictions", "b"]
    assert expand_multi_values(["compare", "x", "-o", "y"], {"compare"}) == ["compare", "x", "-o", "y"]


def test_gallery_selection_takes_every_group_in_turn():
    from iadr1.eval.html import _select

    items = [{"dataset": "D", "class": "a", "kind": "miss", "image": f"a{i}"} for i in range(5)]
    items += [{"dataset": "D", "class": "b", "kind": "miss", "image": "b0"}]
    items += [{"dataset": "D", "class": "a", "kind": "overkill", "image": "o0"}]
    assert [it["image"] for it in _select(items, 4)] == ["a0", "a1", "o0", "b0"]
    assert _select(items, 100) == items


# --- what an inspection engineer asks for ----------------------------------------------------------------------------
def test_colours_mean_one_thing():
    from iadr1.eval.report import goodness

    assert goodness("miss", 0) == 100 and goodness("miss", 30) < 50 and goodness("miss", 60) == 0  # never green
    assert goodness("overkill", 10) == 80 and goodness("unanswered_rate", 50) == 0
    assert goodness("balanced_accuracy", 50) == 0 and goodness("balanced_accuracy", 95) == 90  # chance is red
    assert goodness("auroc", 50) == 0 and goodness("type_accuracy", 70) == 70


def test_location_type_coverage_confusion_and_wrong_finds(tmp_path, capsys):
    """Location and type accuracy in the terminal (80 columns), the heatmap and the HTML; AUROC with the share of
    images that had a P(yes); a confusion matrix per dataset; defects found at the wrong place or of the wrong type
    in the gallery."""
    from rich.console import Console

    from iadr1.eval.pipeline import evaluate
    from iadr1.eval.report import rich_table, write_all

    labels = {f"MVTec-AD/cap/test/crack/{i}.png": True for i in range(4)}
    labels |= {f"MVTec-AD/cap/test/good/{i}.png": False for i in range(4)}
    truth = {"location": "top left", "type": "crack"}
    test = write_test_file(tmp_path / "test_MVTec-AD_format.json", labels, **{k: truth for k in labels if "crack" in k})
    wrong_place = "<think>x</think><location>center</location><type>crack</type><answer>Yes</answer>"
    wrong_type = "<think>x</think><location>top left</location><type>dent</type><answer>Yes</answer>"
    right = "<think>x</think><location>top left</location><type>crack</type><answer>Yes</answer>"
    rows = [ours(f"MVTec-AD/cap/test/crack/{i}.png", "A", raw, p_yes=0.9) for i, raw in
            enumerate([right, wrong_place, wrong_type, right])]  # fmt: skip
    rows += [ours(f"MVTec-AD/cap/test/good/{i}.png", "B", p_yes=0.2 if i < 2 else None) for i in range(3)]
    pred = write_jsonl(tmp_path / "p.jsonl", rows)  # good/3: no prediction
    result = evaluate([test], [pred], n_boot=0)
    ds = result.datasets["MVTec-AD"]
    assert ds["location_accuracy"] == 75.0 and ds["type_accuracy"] == 75.0
    assert ds["p_yes_coverage"] == pytest.approx(6 / 8 * 100)
    console = Console(width=80, record=True)
    console.print(rich_table(result))
    text = console.export_text()
    assert max(map(len, text.splitlines())) <= 80
    assert "type" in text and "loc." in text and "75.0" in text and "(75%)" in text and "had a P(yes)" in text
    paths = write_all(result, tmp_path / "out")
    page = paths["html"].read_text()
    assert "(75% scored)" in page and page.index("type acc.") < page.index("accuracy</th>")  # left, never cut off
    conf = re.search(r'<table class="confusion" data-dataset="MVTec-AD">(.*?)</table>', page, re.S).group(1)
    assert re.findall(r"<td>(\d+)</td>", conf) == ["4", "0", "0", "0", "3", "1"]
    cards = dict(re.findall(r'<figure class="card"[^>]*data-kind="(\w+)">.*?<div class="path">([^<]+)</div>', page))
    assert cards["misplaced"] == "MVTec-AD/cap/test/crack/1.png"
    assert cards["misnamed"] == "MVTec-AD/cap/test/crack/2.png"
    assert "location: center (truth top left)" in page and "type: dent (truth crack)" in page
