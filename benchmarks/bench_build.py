"""Benchmark `build-data`: image validation speed on a generated dataset, and records written per second.

    python benchmarks/bench_build.py          # 50,000 images of 32x32 px (goal: >= 2,000 images/s, 2 cores)
    python benchmarks/bench_build.py --n 5000 --size 64 --workers 1

Writes the dataset into a temporary folder (or --dir), prints the figures, and removes it unless --keep.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from iadr1.data.build import BuildConfig, build_data, validate_images


def make_dataset(root: Path, n: int, size: int, classes: int = 10) -> tuple[Path, Path, Path]:
    """`n` PNGs under `root/img/BENCH/<cls>/train/{good,scratch}/`, a meta.json and annotations (every 4th
    defective).

    64 distinct encoded images are reused byte for byte, so generating 50,000 files takes seconds, not
    minutes; validation still opens and decodes every file.
    """
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(64):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    images = root / "img"
    meta: dict[str, list[dict]] = {}
    anns = []
    for i in range(n):
        cls = f"c{i % classes}"
        anomalous = i % 4 == 3
        specie = "scratch" if anomalous else "good"
        rel = f"BENCH/{cls}/train/{specie}/{i:06d}.png"
        path = images / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blobs[i % len(blobs)])
        meta.setdefault(cls, []).append(
            {
                "img_path": rel,
                "mask_path": "",
                "cls_name": cls,
                "specie_name": specie,
                "anomaly": int(anomalous),
            }
        )
        if anomalous:
            anns.append({"image": rel, "reasoning": "A thin line crosses the part.", "location": "top left",
                         "type": "Scratch"})  # fmt: skip
    meta_path = root / "meta.json"
    meta_path.write_text(json.dumps(meta))
    ann_path = root / "annotations.jsonl"
    ann_path.write_text("".join(json.dumps(a) + "\n" for a in anns))
    return images, meta_path, ann_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000, help="number of images")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--workers", type=int, default=None, help="image-check processes (default: CPU count)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the dataset (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated dataset")
    args = ap.parse_args()

    root = args.dir or Path(tempfile.mkdtemp(prefix="iadr1-bench-"))
    try:
        t = time.perf_counter()
        images, meta, anns = make_dataset(root, args.n, args.size)
        print(f"generated {args.n} images of {args.size}x{args.size} px in {time.perf_counter() - t:.1f} s ({root})")
        paths = sorted(images.rglob("*.png"))
        workers = args.workers or os.cpu_count() or 1

        t = time.perf_counter()
        bad = validate_images(paths[:5000], workers=1)
        serial = min(5000, len(paths)) / (time.perf_counter() - t)
        t = time.perf_counter()
        bad = validate_images(paths, workers=workers)
        dt = time.perf_counter() - t
        assert not bad, f"{len(bad)} generated images failed the check"
        print(f"image validation, 1 process:         {serial:8.0f} images/s")
        print(f"image validation, {workers} processes:       {len(paths) / dt:8.0f} images/s  "
              f"({len(paths)} images in {dt:.2f} s; goal >= 2000)")  # fmt: skip

        t = time.perf_counter()
        res = build_data(meta, anns, images, root / "out", BuildConfig(shots=[0, 1], workers=workers))
        dt = time.perf_counter() - t
        records = sum(f.records for f in res.files.values())
        print(f"build-data end to end (0+1-shot):    {records / dt:8.0f} records/s  "
              f"({records} records in 4 files in {dt:.2f} s, images checked included)")  # fmt: skip
        print(f"build-data per input image:          {args.n / dt:8.0f} images/s")
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
