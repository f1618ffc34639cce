"""Small benchmark trees for the inference tests: random PNGs, a test file with templates, broken images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_png(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    """A random RGB PNG of `size` (width, height): distinct sizes let tests tell images apart after transport."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def make_bench(
    root: Path, n: int = 8, n_templates: int = 3, corrupt: bool = True, missing: bool = True, name: str = "DS"
) -> tuple[Path, Path, list[str]]:
    """Write `n` test images (every other one defective) + templates under `root/images`, and a test file.

    With `corrupt`/`missing`, the last two keys point at a truncated PNG and a file that does not exist.
    Returns (test file, image root, keys in file order).
    """
    images = root / "images"
    tpl = [f"{name}/cls/template/{i:03d}.png" for i in range(n_templates)]
    for i, rel in enumerate(tpl):
        write_png(images / rel, 1000 + i, size=(40 + 4 * i, 40))
    keys: list[str] = []
    test: dict[str, dict] = {}
    for i in range(n):
        defect = i % 2 == 1
        rel = f"{name}/cls/test/{'defect' if defect else 'good'}/{i:03d}.png"
        write_png(images / rel, i, size=(64 + i, 48))
        keys.append(rel)
    if corrupt:
        bad = images / f"{name}/cls/test/defect/corrupt.png"
        good_bytes = (images / keys[0]).read_bytes()
        bad.write_bytes(good_bytes[: len(good_bytes) // 2])
        keys.append(f"{name}/cls/test/defect/corrupt.png")
    if missing:
        keys.append(f"{name}/cls/test/good/missing.png")
    for i, rel in enumerate(keys):
        defect = "/defect/" in rel
        test[rel] = {
            "image_path": rel,
            "conversation": [
                {
                    "Question": "Are there any defects in the query image?",
                    "Answer": "A" if defect else "B",
                    "Options": {"A": "Yes.", "B": "No."},
                    "type": "Anomaly Detection",
                }
            ],
            "random_templates": tpl[i % n_templates :] + tpl[: i % n_templates],
            "similar_templates": list(reversed(tpl)),
        }
    test_file = root / f"test_{name}_format.json"
    test_file.write_text(json.dumps(test, indent=2))
    return test_file, images, keys
