"""Benchmark `iadr1 annotate --reasoner template` on MVTec-sized masks, reading included, on one core.

    python benchmarks/bench_annotate.py            # 400 defective images, 1024x1024 masks (goal: >= 150 images/s)
    python benchmarks/bench_annotate.py --n 2000 --side 1024 --normal 0.5

Writes an MVTec-style tree (images, masks with one to three defects of 0.05-5% of the image, as real masks have)
into a temporary folder, runs `annotate` pinned to one core, and prints images/s for the whole run and the cost of
each stage (image header, mask decode, mask facts, text and write) measured on the same files. The masks are
distinct, so no stage is cached; the PNGs are written once before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from iadr1.data.annotate import mask_facts, read_mask, template_defect
from iadr1.data.annotate.run import AnnotateConfig, annotate
from iadr1.data.meta import write_meta
from iadr1.data.schemas import MetaEntry


def random_mask(rng: np.random.Generator, side: int) -> np.ndarray:
    yy, xx = np.ogrid[:side, :side]
    m = np.zeros((side, side), bool)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.05, 0.95, 2) * side
        area = rng.uniform(0.0005, 0.05 / 2) * side * side
        ratio = rng.uniform(0.2, 1.0)
        a = np.sqrt(area / np.pi / ratio)
        b = a * ratio
        th = rng.uniform(0, np.pi)
        u, v = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th), -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        m |= (u / a) ** 2 + (v / b) ** 2 <= 1
    return m


def make_tree(root: Path, n: int, side: int, normal: float) -> Path:
    rng = np.random.default_rng(0)
    image = root / "image.png"
    Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(image)  # headers are all annotate reads
    entries = []
    n_normal = int(round(n * normal))
    for i in range(n):
        anomalous = i >= n_normal
        specie = "scratch" if anomalous else "good"
        rel = f"part/test/{specie}/{i:05d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(image, root / rel)
        mask = ""
        if anomalous:
            mask = f"part/ground_truth/scratch/{i:05d}_mask.png"
            (root / mask).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(random_mask(rng, side).astype(np.uint8) * 255).save(root / mask)
        entries.append(MetaEntry(img_path=rel, mask_path=mask, cls_name="part", specie_name=specie,
                                 anomaly=int(anomalous), split="test"))  # fmt: skip
    return write_meta({"part": entries}, root / "meta.json")


def stage_costs(root: Path, meta: dict, repeat: int = 1) -> dict[str, float]:
    """Milliseconds per defective image of each stage, on the files the run read."""
    masks = [(e["img_path"], e["mask_path"]) for e in meta["part"] if e["mask_path"]]
    costs = {}
    t = time.perf_counter()
    for img, _ in masks:
        with Image.open(root / img) as im:
            _ = im.size
    costs["image_header_ms"] = (time.perf_counter() - t) / len(masks) * 1000
    t = time.perf_counter()
    decoded = [read_mask(root / m)[0] for _, m in masks]
    costs["mask_decode_ms"] = (time.perf_counter() - t) / len(masks) * 1000
    t = time.perf_counter()
    facts = [mask_facts(d) for d in decoded]
    costs["mask_facts_ms"] = (time.perf_counter() - t) / len(masks) * 1000
    t = time.perf_counter()
    for (img, _), f in zip(masks, facts, strict=True):
        json.dumps({"image": img, "reasoning": template_defect("part", f, "Scratch", "scratch", img)})
    costs["text_ms"] = (time.perf_counter() - t) / len(masks) * 1000
    return {k: round(v, 3) for k, v in costs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="images")
    ap.add_argument("--side", type=int, default=1024, help="image and mask side in pixels")
    ap.add_argument("--normal", type=float, default=0.0, help="share of normal images (no mask to read)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the goal states
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench_annotate_"))
    try:
        t = time.perf_counter()
        meta_path = make_tree(work, args.n, args.side, args.normal)
        build_s = time.perf_counter() - t
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        t = time.perf_counter()
        result = annotate(AnnotateConfig(meta=meta_path, image_root=work, out=work / "out" / "a.jsonl", sheet=0))
        run_s = time.perf_counter() - t
        meta = json.loads(meta_path.read_text())
        figures = {
            "images": args.n,
            "defective": sum(1 for e in meta["part"] if e["anomaly"]),
            "side": args.side,
            "cores": 1,
            "load_average_before": load,
            "tree_written_s": round(build_s, 1),
            "annotate_s": round(run_s, 3),
            "images_per_s": round(args.n / run_s, 1),
            "goal_images_per_s": 150,
            "annotated": result.report["annotated"],
            "problems": result.report["run"]["problems"],
            **stage_costs(work, meta),
        }
        print(json.dumps(figures, indent=2))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
