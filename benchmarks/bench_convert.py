"""Time `iadr1 convert` on a generated dataset of small PNGs: scan -> meta.json -> test file with templates.

    python benchmarks/bench_convert.py [--images 50000] [--classes 10] [--workers 0] [--keep DIR]

Writes a folder-layout dataset (per class: 20% train/good references, 40% test/good, 40% test/defect; 8x8 PNGs,
a few encoded byte strings per class reused so generating is fast) into a temporary folder, then prints the time of
each phase and images per second for the whole conversion with and without similar templates.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _png(value: int, size: int = 8) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(value)
    arr = np.clip(rng.normal(value, 20, (size, size)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def generate(root: Path, dataset: str, images: int, classes: int) -> int:
    """Write the dataset; return the number of files written."""
    per_class = images // classes
    variants = {c: [_png(10 + 29 * c + 7 * v) for v in range(8)] for c in range(classes)}
    n = 0
    for c in range(classes):
        base = root / dataset / f"class{c:02d}"
        counts = {"train/good": per_class // 5, "test/good": (per_class * 2) // 5}
        counts["test/defect"] = per_class - sum(counts.values())
        for folder, count in counts.items():
            d = base / folder
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                (d / f"{i:05d}.png").write_bytes(variants[c][i % 8])
            n += count
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--num-templates", dest="templates", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0, help="descriptor processes (0: all cores)")
    ap.add_argument("--keep", type=Path, default=None, help="generate into this folder and keep it")
    args = ap.parse_args()

    from iadr1.data.convert import (
        build_test_file,
        build_test_records,
        read_meta,
        scan_layout,
        write_meta,
        write_test_file,
    )

    with tempfile.TemporaryDirectory(prefix="bench_convert_") as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        n = generate(root, "BENCH", args.images, args.classes)
        print(f"generated {n} PNGs in {time.perf_counter() - t0:.1f} s under {root} (cores: {os.cpu_count()})")

        times: dict[str, float] = {}

        def timed(name: str, fn):
            t = time.perf_counter()
            out = fn()
            times[name] = time.perf_counter() - t
            return out

        k = args.templates
        meta = timed("scan (folder layout)", lambda: scan_layout("folder", root, "BENCH"))
        timed("write meta.json", lambda: write_meta(meta, root / "meta.json"))
        meta = timed("read meta.json", lambda: read_meta(root / "meta.json"))
        plain = timed("records, random templates", lambda: build_test_records(meta, root, k, similar=False))
        timed("write test file", lambda: write_test_file(plain, root / "test.json"))
        full = timed(
            "records, random + similar templates",
            lambda: build_test_records(meta, root, k, workers=args.workers or None),
        )
        timed("build_test_file (TestEntry objects)", lambda: build_test_file(meta, root, k, similar=False))
        described = sum(len(v) for v in meta.values())
        assert len(full) == len(plain) and all(e["similar_templates"] for e in full.values())

        width = max(map(len, times))
        for name, t in times.items():
            print(f"  {name:<{width}}  {t * 1000:8.0f} ms")
        # What `iadr1 convert --layout folder --root R --dataset D --test-file T` does: scan, records, write.
        base = times["scan (folder layout)"] + times["write test file"]
        without = base + times["records, random templates"]
        with_sim = base + times["records, random + similar templates"]
        desc_s = times["records, random + similar templates"] - times["records, random templates"]
        print(f"images: {n}; test records: {len(plain)}; images described for similar templates: {described}")
        print(f"convert, random templates only:      {n / without:9,.0f} images/s ({without:.2f} s)")
        print(f"convert, random + similar templates: {n / with_sim:9,.0f} images/s ({with_sim:.2f} s)")
        print(f"image descriptors alone:             {described / desc_s:9,.0f} images/s ({desc_s:.2f} s)")


if __name__ == "__main__":
    main()
