"""Rewards by name for configs and the GRPO trainer: built-in names and user rewards as `module:function`."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from iadr1.errors import ConfigError
from iadr1.rewards.accuracy import accuracy_reward, accuracy_strict
from iadr1.rewards.consistency import consistency_reward, consistency_strict, tag_count_reward

RewardFunc = Callable[..., list[float | None]]

REWARDS: dict[str, RewardFunc] = {
    "accuracy": accuracy_reward,
    "consistency": consistency_reward,
    "accuracy_strict": accuracy_strict,
    "consistency_strict": consistency_strict,
    "tag_count": tag_count_reward,
}
PUBLISHED = ("accuracy", "consistency")  # the paper's SC-GRPO: their sum, unweighted


class RewardFuncs(NamedTuple):
    """What `GRPOTrainer` takes: `reward_funcs` and `GRPOConfig.reward_weights`, in the same order.

    `funcs, weights = get_reward_funcs(...)` unpacks it; each function's `__name__` is its registry name,
    which TRL uses in its logs (`rewards/accuracy/mean`).
    """

    funcs: list[RewardFunc]
    weights: list[float]

    @property
    def names(self) -> list[str]:
        return [f.__name__ for f in self.funcs]


def _named(func: RewardFunc, name: str) -> RewardFunc:
    """A thin wrapper called `name`, so that the original function keeps its own name."""
    if getattr(func, "__name__", None) == name:
        return func

    @functools.wraps(func)
    def reward(*args: Any, **kwargs: Any) -> list[float | None]:
        return func(*args, **kwargs)

    reward.__name__ = reward.__qualname__ = name
    return reward


def _load_module(spec: str, module_name: str) -> Any:
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser()
        if not path.is_file():
            raise ConfigError(f"reward {spec!r}: file {path} not found")
        mod_name = f"iadr1_user_rewards_{path.stem}"
        file_spec = importlib.util.spec_from_file_location(mod_name, path)
        if file_spec is None or file_spec.loader is None:
            raise ConfigError(f"reward {spec!r}: cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[mod_name] = module  # pickling the function (dataloader workers) needs the module
        file_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"reward {spec!r}: cannot import module {module_name!r} ({e})") from None


def resolve_reward(name: str | RewardFunc) -> RewardFunc:
    """One reward function from a registry name, `module:function`, `path/to/file.py:function`, or a callable.

    The returned function's `__name__` is the name given (a callable keeps its own). A user reward is
    called like the built-ins: `f(completions, solution, **kwargs) -> list[float | None]`, with every
    dataset column in kwargs.
    """
    if callable(name):
        return name
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"reward {name!r}: expected a reward name or 'module:function'")
    name = name.strip()
    if name in REWARDS:
        return _named(REWARDS[name], name)
    if ":" not in name:
        known = ", ".join(REWARDS)
        raise ConfigError(f"unknown reward {name!r}: use one of {known}, or 'module:function' for your own")
    module_name, _, attr = name.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"reward {name!r}: expected 'module:function'")
    func = getattr(_load_module(name, module_name), attr, None)
    if func is None:
        raise ConfigError(f"reward {name!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(func):
        raise ConfigError(f"reward {name!r}: {attr!r} is a {type(func).__name__}, not a function")
    return _named(func, name)


def get_reward_funcs(
    names: Sequence[str | RewardFunc] | str = PUBLISHED, weights: Sequence[float] | None = None
) -> RewardFuncs:
    """Resolve reward names (and `module:function` user rewards) into functions and weights for TRL.

    `weights` default to 1 each (the published total is accuracy + consistency, unweighted). Raises
    ConfigError for an unknown name, a repeated name, an import failure, or weights of the wrong length.

    >>> funcs, weights = get_reward_funcs(["accuracy", "consistency"])
    >>> [f.__name__ for f in funcs], weights
    (['accuracy', 'consistency'], [1.0, 1.0])
    """
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if not names:
        raise ConfigError("no reward functions given")
    funcs = [resolve_reward(n) for n in names]
    seen: set[str] = set()
    for f in funcs:
        fname = getattr(f, "__name__", repr(f))
        if fname in seen:
            raise ConfigError(f"reward {fname!r} is listed twice")
        seen.add(fname)
    if weights is None:
        return RewardFuncs(funcs, [1.0] * len(funcs))
    weights = [float(w) for w in weights]
    if len(weights) != len(funcs):
        listed = ", ".join(f.__name__ for f in funcs)
        raise ConfigError(f"{len(weights)} reward weights for {len(funcs)} reward functions ({listed})")
    return RewardFuncs(funcs, weights)
