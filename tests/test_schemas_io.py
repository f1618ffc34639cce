import json
import os
import signal
import subprocess
import sys

import pytest

from iadr1.data import io
from iadr1.data.meta import read_meta, split_of
from iadr1.data.schemas import (
    GRPORecord,
    MetaEntry,
    Prediction,
    SFTRecord,
    dump_test_file,
    load_records,
    load_test_file,
)
from iadr1.errors import DataError


def test_real_test_file_round_trips(shared_data, tmp_path):
    src = shared_data / "test_SDD_format.json"
    entries = load_test_file(src)
    assert len(entries) == 340
    assert sum(e.is_anomalous for e in entries.values()) == 54
    out = dump_test_file(entries, tmp_path / "out.json")
    assert json.loads(out.read_text()) == json.loads(src.read_text())
    e = entries["SDD/test/good/kos01_Part1_2.png"]
    assert (e.dataset, e.cls_name, e.is_anomalous) == ("SDD", "SDD", False)


def test_validation_error_names_file_record_and_field(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"a.png": {"image_path": "a.png", "conversation": [{"Answer": "C"}]}}))
    with pytest.raises(DataError) as e:
        load_test_file(p)
    msg = str(e.value)
    assert str(p) in msg and "'a.png'" in msg and "conversation.0.Answer" in msg and "\n" not in msg


def test_wrong_field_type_in_meta(tmp_path):
    p = tmp_path / "meta.json"
    entry = {"img_path": "x.png", "cls_name": "bottle", "specie_name": "good", "anomaly": "x"}
    p.write_text(json.dumps({"bottle": [entry]}))
    with pytest.raises(DataError, match=r"bottle\[0\].*'anomaly'"):
        read_meta(p)


def test_meta_accepts_train_test_split(tmp_path):
    e = {"img_path": "a.png", "mask_path": "", "cls_name": "c", "specie_name": "good", "anomaly": 0}
    p = tmp_path / "meta.json"
    p.write_text(json.dumps({"test": {"c": [e]}, "train": {"c": [e]}}))
    assert [split_of(x) for x in read_meta(p)["c"]] == ["test", "train"]
    assert MetaEntry.model_validate({**e, "anomaly": True}).anomaly == 1


def test_malformed_json_names_file_and_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"a": 1,\n "b": }')
    with pytest.raises(DataError, match=r"bad.json: malformed JSON at line 2"):
        io.read_json(p)
    with pytest.raises(DataError, match="file not found"):
        io.read_json(tmp_path / "nope.json")


def test_records_jsonl_and_json(tmp_path):
    sft = {
        "images": ["r.png", "q.png"],
        "messages": [
            {"role": "user", "content": "<image>\nQ"},
            {"role": "assistant", "content": "<answer>No</answer>"},
        ],
    }
    io.atomic_write_jsonl(tmp_path / "s.jsonl", [sft, sft])
    assert len(load_records(tmp_path / "s.jsonl", SFTRecord)) == 2
    io.atomic_write_json(tmp_path / "g.json", [{"id": "1", "image": "q.png", "problem": "p", "solution": 3}])
    with pytest.raises(DataError, match=r"record 0: field 'solution'"):
        load_records(tmp_path / "g.json", GRPORecord)
    assert Prediction(image="x").letter == "E"


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x.png", "a/../../x.png", "C:/x.png"])
def test_path_escape_is_an_error(bad):
    with pytest.raises(DataError, match="absolute|escapes"):
        io.safe_relpath(bad, "/data")


def test_safe_relpath_accepts_inner_dotdot():
    assert io.safe_relpath("a/../b/c.png") == "a/../b/c.png"  # stays inside the root: allowed
    assert io.safe_relpath("./a/b.png").endswith("a/b.png")


def test_check_image_problems(tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), (10, 20, 30)).save(good)
    assert io.check_image(good) is None
    (tmp_path / "empty.png").write_bytes(b"")
    assert "0 bytes" in io.check_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("hello, I am not a picture")
    assert "not an image" in io.check_image(tmp_path / "text.png")
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:60])
    assert "corrupt" in io.check_image(tmp_path / "trunc.png")
    assert io.check_image(tmp_path / "missing.png") == "missing file"
    with pytest.raises(DataError, match="missing.png: missing file"):
        io.load_rgb(tmp_path / "missing.png")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "x.json"
    io.atomic_write_json(p, {"a": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        io.atomic_write_json(p, {"a": Boom()})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["x.json"]


def test_jsonl_appender_survives_sigkill_and_torn_tail(tmp_path):
    p = tmp_path / "p.jsonl"
    code = (
        "import sys, time; from iadr1.data.io import JsonlAppender\n"
        f"with JsonlAppender({str(p)!r}) as w:\n"
        "    for i in range(10**6):\n"
        "        w.write({'i': i}); print(i, flush=True)\n"
        "        if i == 20: time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.strip() == "20":
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows = [o for _, o in io.iter_jsonl(p)]
    assert [r["i"] for r in rows] == list(range(21))
    # A torn last line (no newline) is ignored on read and cut off before the next append.
    with open(p, "a") as f:
        f.write('{"i": 21, "par')
    assert len(list(io.iter_jsonl(p))) == 21
    with io.JsonlAppender(p) as w:
        w.write({"i": 21})
    assert [o["i"] for _, o in io.iter_jsonl(p)] == list(range(22))


def test_atomic_write_uses_normal_permissions(tmp_path):
    p = io.atomic_write_text(tmp_path / "perm.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask


# --- duplicate keys: JSON keeps the last value silently, iadr1 refuses the file (issue 12) ---------------------------
def test_duplicate_keys_are_one_line_errors_naming_file_and_record(tmp_path):
    p = tmp_path / "t.json"
    rec = '{"image_path": "a.png", "conversation": [{"Answer": "A"}]}'
    p.write_text('{"a.png": ' + rec + ', "b.png": ' + rec + ', "a.png": ' + rec + "}")
    with pytest.raises(DataError) as e:
        io.read_json(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and "'a.png' appears twice" in msg and "\n" not in msg
    with pytest.raises(DataError, match="'a.png' appears twice"):
        load_test_file(p)
    # Inside a record: the record is named.
    p.write_text('{"a.png": {"image_path": "a.png", "conversation": [{"Answer": "A", "Answer": "B"}]}}')
    with pytest.raises(DataError, match=r"t.json: record 'a.png': key 'Answer' appears twice"):
        load_test_file(p)
    p.write_text('[{"id": 1}, {"id": 2, "id": 3}]')
    with pytest.raises(DataError, match=r"record 1: key 'id' appears twice"):
        io.read_json(p)
    meta = tmp_path / "meta.json"
    meta.write_text('{"c": [], "c": []}')
    with pytest.raises(DataError, match="'c' appears twice"):
        read_meta(meta)
    lines = tmp_path / "r.jsonl"
    lines.write_text('{"a": 1}\n{"a": 1, "a": 2}\n')
    with pytest.raises(DataError, match=r"r.jsonl: line 2: key 'a' appears twice"):
        list(io.iter_jsonl(lines))
    assert [o for _, o in io.iter_jsonl(lines, unique_keys=False)] == [{"a": 1}, {"a": 2}]
    assert [o for _, o in io.iter_records(lines, unique_keys=False)] == [{"a": 1}, {"a": 2}]


def test_prediction_p_yes_must_be_finite():
    with pytest.raises(ValueError, match="finite"):
        Prediction(image="x", p_yes=float("nan"))
    assert Prediction(image="x", p_yes=0.25).p_yes == 0.25


def test_one_records_reader_for_the_three_forms(tmp_path):
    recs = [{"image": "a.png", "v": 1}, {"image": "b.png", "v": 2}]
    jsonl = io.atomic_write_jsonl(tmp_path / "r.jsonl", recs)
    listed = io.atomic_write_json(tmp_path / "r.json", recs)
    keyed = io.atomic_write_json(tmp_path / "k.json", {"a.png": {"v": 1}, "b.png": {"img_path": "x.png", "v": 2}})
    assert list(io.iter_records(jsonl)) == [("line 1", recs[0]), ("line 2", recs[1])]
    assert list(io.iter_records(listed)) == [(0, recs[0]), (1, recs[1])]
    # Keyed: the key fills the field, unless the record names its image already (under the field or an alias).
    assert list(io.iter_records(keyed, key_field="image", aliases=("img_path",))) == [
        ("a.png", {"image": "a.png", "v": 1}),
        ("b.png", {"img_path": "x.png", "v": 2}),
    ]
    scalar = io.atomic_write_json(tmp_path / "s.json", 3)
    with pytest.raises(DataError, match=r"s.json: annotations must be a JSON list, a JSON object keyed by image"):
        list(io.iter_records(scalar, key_field="image", what="annotations"))
    # Bad lines: an error, or (for readers that skip and report) a `BadLine` in their place.
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n{"a": 1, "a": 2}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: malformed JSON on line 2"):
        list(io.iter_records(tmp_path / "bad.jsonl"))
    got = list(io.iter_records(tmp_path / "bad.jsonl", bad_lines=True))
    assert [k for k, _ in got] == ["line 1", "line 2", "line 3"]
    assert got[1][1] == io.BadLine("malformed JSON: Expecting property name enclosed in double quotes")
    assert "'a' appears twice" in got[2][1].why
    (tmp_path / "latin.jsonl").write_bytes(b'{"a": "\xe9"}\n')
    with pytest.raises(DataError, match="latin.jsonl: not UTF-8 text"):
        list(io.iter_records(tmp_path / "latin.jsonl"))
