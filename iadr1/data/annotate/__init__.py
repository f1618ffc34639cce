"""`iadr1 annotate`: the training answers for a user's own images, from their masks and defect names
(docs/annotate.md).

The owner of the rules an annotation is made of: the mask -> 3x3-grid location rule and the mask's facts
(`masks`), the defect name -> category table (`defect_names`), the template reasoning texts and the generic text of
a normal image (`reasoning`), the teacher model's prompt and the check of its replies (`teacher`). `run.annotate`
writes the annotations file `iadr1 build-data --annotations` reads, resumably, and its report.
"""

from iadr1.data.annotate.defect_names import CATEGORY_NAMES, DEFECT_NAMES, TypeChoice, TypeTable
from iadr1.data.annotate.masks import GRID_WORDS, MaskFacts, grid_location, mask_facts, read_mask, where_phrase
from iadr1.data.annotate.reasoning import generic_reasoning, template_defect, template_normal
from iadr1.data.annotate.run import AnnotateConfig, AnnotateResult, annotate

__all__ = [
    "AnnotateConfig",
    "AnnotateResult",
    "CATEGORY_NAMES",
    "DEFECT_NAMES",
    "GRID_WORDS",
    "MaskFacts",
    "TypeChoice",
    "TypeTable",
    "annotate",
    "generic_reasoning",
    "grid_location",
    "mask_facts",
    "read_mask",
    "template_defect",
    "template_normal",
    "where_phrase",
]
