"""SC-GRPO rewards (docs/method.md §4) as small pure functions with TRL's reward signature.

Each reward is `f(completions, solution, **kwargs) -> list[float]`, a completion being a string or TRL's
`[{"role": "assistant", "content": str}]`. `accuracy_reward` and `consistency_reward` reproduce the published
rewards, quirks included; `accuracy_strict`, `consistency_strict` and `tag_count_reward` are fixed variants.
`get_reward_funcs` resolves names for the trainer. None of them raises on any completion; a solution without a
yes/no `<answer>` scores 0, and `validate_solution` rejects it up front. See docs/rewards.md.
"""

from iadr1.rewards.accuracy import accuracy_reward, accuracy_strict
from iadr1.rewards.consistency import consistency_reward, consistency_strict, tag_count_reward
from iadr1.rewards.defect_types import (
    CATEGORIES,
    GROUP_TERMS,
    TypeMatch,
    normalize_type,
    type_category,
    type_score,
)
from iadr1.rewards.location import location_cell, location_score
from iadr1.rewards.registry import PUBLISHED, REWARDS, RewardFuncs, get_reward_funcs, resolve_reward
from iadr1.rewards.solution import GroundTruth, parse_solution, validate_solution
from iadr1.rewards.tags import completion_text

__all__ = [
    "CATEGORIES",
    "GROUP_TERMS",
    "PUBLISHED",
    "REWARDS",
    "GroundTruth",
    "RewardFuncs",
    "TypeMatch",
    "accuracy_reward",
    "accuracy_strict",
    "completion_text",
    "consistency_reward",
    "consistency_strict",
    "get_reward_funcs",
    "location_cell",
    "location_score",
    "normalize_type",
    "parse_solution",
    "resolve_reward",
    "tag_count_reward",
    "type_category",
    "type_score",
    "validate_solution",
]
