"""From a dataset's defect name (the `specie_name` of meta.json) to the method's eight defect categories.

The table below names every defect folder of MVTec-AD, MPDD, BTAD and the embedded demo dataset, with the
category it maps to by what the defect physically is, or `None` (generic) where the name does not say what
kind of defect it is; docs/annotate.md gives the reason for every hard case. The categories are those of the
SC-GRPO type reward (`iadr1.rewards.defect_types.CATEGORIES`), written as the annotations write them
("Missing parts", "Presence of foreign objects").

A user file (`--types FILE`, YAML or JSON) extends or overrides it:

    names:                     # defect name -> category, or null for generic (any dataset, every class)
      rust: Contamination
      bottle/contamination: Presence of foreign objects   # CLASS/NAME: that class only
    classes:                   # the category of a class's generic defects (VisA, KolektorSDD, DAGM, DTD: all
      candle: Contamination    # generic); CLASS or DATASET/CLASS (the first folder of the meta's img_path)
      "*": Damage              # any class

Categories may be given in any spelling the type reward maps exactly to a category ("stain" is Contamination).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iadr1.errors import ConfigError
from iadr1.rewards.defect_types import CATEGORIES, type_category

# The annotation's spelling of each category (the type reward's category keys, capitalised).
CATEGORY_NAMES: dict[str, str] = {cat: cat[0].upper() + cat[1:] for cat in CATEGORIES}

SCRATCH, HOLE, CONTAMINATION, DAMAGE = "Scratch", "Hole", "Contamination", "Damage"
MISSING, DEFORMATION, FOREIGN, ABRASION = "Missing parts", "Deformation", "Presence of foreign objects", "Abrasion"

# Defect name -> category (None: generic). Lower-case; matched on the lower-cased `specie_name`.
DEFECT_NAMES: dict[str, str | None] = {
    # --- the embedded demo dataset (iadr1.data.synthetic): one defect per category
    "scratch": SCRATCH,
    "hole": HOLE,
    "stain": CONTAMINATION,
    "crack": DAMAGE,
    "missing_part": MISSING,
    "deformation": DEFORMATION,
    "foreign_object": FOREIGN,
    "abrasion": ABRASION,
    # --- MVTec-AD
    "broken_large": DAMAGE,  # bottle
    "broken_small": DAMAGE,
    "contamination": CONTAMINATION,  # bottle, pill
    "bent_wire": DEFORMATION,  # cable
    "cable_swap": None,  # cable: two wires of the wrong colours; an assembly error, no material defect
    "combined": None,  # cable, pill, wood, zipper: several defect kinds in one image
    "cut_inner_insulation": DAMAGE,
    "cut_outer_insulation": DAMAGE,
    "missing_cable": MISSING,
    "missing_wire": MISSING,
    "poke_insulation": HOLE,
    "faulty_imprint": MISSING,  # capsule, pill: the print is incomplete (letters or dots missing)
    "poke": HOLE,  # capsule, leather
    "squeeze": DEFORMATION,  # capsule
    "color": CONTAMINATION,  # carpet, leather, metal_nut, pill, wood: a colour anomaly of the surface
    "cut": DAMAGE,  # carpet, hazelnut, leather
    "metal_contamination": CONTAMINATION,  # carpet, grid
    "thread": FOREIGN,  # carpet, grid: a loose thread lying on the part
    "bent": DEFORMATION,  # grid, metal_nut
    "broken": DAMAGE,  # grid
    "glue": CONTAMINATION,  # grid, leather
    "print": CONTAMINATION,  # hazelnut: ink printed on the shell
    "fold": DEFORMATION,  # leather
    "flip": None,  # metal_nut: the nut lies upside down; orientation, not a defect of the part
    "pill_type": None,  # pill: a pill of another product; the wrong part, not a defect of it
    "manipulated_front": DEFORMATION,  # screw: the tip is bent or flattened
    "scratch_head": SCRATCH,
    "scratch_neck": SCRATCH,
    "thread_side": DAMAGE,  # screw: the screw thread is damaged (not a loose thread)
    "thread_top": DAMAGE,
    "glue_strip": CONTAMINATION,  # tile
    "gray_stroke": CONTAMINATION,  # tile: a stroke of grey paint
    "oil": CONTAMINATION,  # tile
    "rough": ABRASION,  # tile, zipper: a worn, roughened surface
    "defective": None,  # toothbrush: the name says only that something is wrong
    "bent_lead": DEFORMATION,  # transistor
    "cut_lead": DAMAGE,
    "damaged_case": DAMAGE,
    "misplaced": None,  # transistor: shifted, turned or absent; a placement error that may or may not be missing
    "liquid": CONTAMINATION,  # wood
    "broken_teeth": DAMAGE,  # zipper
    "fabric_border": DAMAGE,
    "fabric_interior": DAMAGE,
    "split_teeth": DEFORMATION,  # zipper: teeth pulled apart
    "squeezed_teeth": DEFORMATION,
    # --- MPDD
    "scratches": SCRATCH,  # bracket_black, bracket_white, metal_plate
    "bend_and_parts_mismatch": DEFORMATION,  # bracket_brown: bent (and of another part type)
    "parts_mismatch": None,  # bracket_brown, connector: the wrong part, not a defect of it
    "defective_painting": CONTAMINATION,  # bracket_white: uneven or stained paint
    "major_rust": CONTAMINATION,  # metal_plate: rust shows as a discoloured patch of the surface
    "total_rust": CONTAMINATION,
    "anomalous": None,  # tubes: the name says only that something is wrong
    # --- names that carry no kind: BTAD `ko`, DTD-Synthetic `bad`, VisA `anomaly`, KolektorSDD and DAGM `defect`
    "ko": None,
    "bad": None,
    "anomaly": None,
    "defect": None,
}


def category(text: str, where: str = "") -> str:
    """The annotation's spelling of the category a text names exactly ("stain" -> "Contamination"); a text that is
    not a category keyword is a `ConfigError` (`where` names the file and entry)."""
    m = type_category(str(text))
    if m.category is None or m.confidence < 1.0:
        choices = ", ".join(CATEGORY_NAMES.values())
        raise ConfigError(f"{where}{text!r} is not one of the defect categories ({choices}) or their keywords")
    return CATEGORY_NAMES[m.category]


@dataclass(frozen=True)
class TypeChoice:
    """The category of one defect, and where it came from: `table` (the built-in table), `file` (the user's
    names), `class_default` (the user's classes), or None with `source` `generic` (the name says no kind) or
    `unknown` (a name no table knows)."""

    type: str | None
    source: str


@dataclass
class TypeTable:
    """The built-in table, extended by a user's file (`load`)."""

    names: dict[str, str | None] = field(default_factory=lambda: dict(DEFECT_NAMES))
    user_names: dict[str, str | None] = field(default_factory=dict)  # NAME or CLASS/NAME
    classes: dict[str, str] = field(default_factory=dict)  # CLASS, DATASET/CLASS or "*"

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> TypeTable:
        """The table with the user's `--types FILE` (YAML or JSON; see the module docstring) read into it."""
        table = cls()
        if path is None:
            return table
        from iadr1.config import read_yaml  # YAML is a superset of JSON: one reader for both

        p = Path(path)
        raw: Any = read_yaml(p)
        if not isinstance(raw, dict) or set(raw) - {"names", "classes"}:
            raise ConfigError(f"{p}: a types file is a mapping with `names` and/or `classes` (docs/annotate.md)")
        for key, value in (raw.get("names") or {}).items():
            name = str(key).strip().lower()
            table.user_names[name] = None if value is None else category(value, f"{p}: names.{key}: ")
        for key, value in (raw.get("classes") or {}).items():
            if value is None:
                raise ConfigError(f"{p}: classes.{key}: give a category (a class default cannot be generic)")
            table.classes[str(key).strip()] = category(value, f"{p}: classes.{key}: ")
        return table

    def choose(self, specie: str, cls_name: str, img_path: str = "") -> TypeChoice:
        """The category of defect `specie` of class `cls_name`: the user's CLASS/NAME, then NAME, then the built-in
        table; a generic or unknown name then takes the user's default for DATASET/CLASS (DATASET: the first folder
        of `img_path`), CLASS, or "*"."""
        name = specie.strip().lower()
        for key in (f"{cls_name.lower()}/{name}", name):
            if key in self.user_names:
                found = self.user_names[key]
                if found is not None:
                    return TypeChoice(found, "file")
                return self._default(cls_name, img_path, "generic")
        if name in self.names:
            found = self.names[name]
            return TypeChoice(found, "table") if found is not None else self._default(cls_name, img_path, "generic")
        return self._default(cls_name, img_path, "unknown")

    def _default(self, cls_name: str, img_path: str, why: str) -> TypeChoice:
        dataset = img_path.split("/", 1)[0] if "/" in img_path else ""
        for key in (f"{dataset}/{cls_name}" if dataset else None, cls_name, "*"):
            if key and key in self.classes:
                return TypeChoice(self.classes[key], "class_default")
        return TypeChoice(None, why)
