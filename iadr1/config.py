"""The one config module: YAML files, `--set KEY=VALUE` overrides, layering, and the one-line validation error.

Every command that takes a config (`sft`, `grpo`, `infer`, `demo`, `build-data`, `eval`) validates it with a
pydantic model whose field descriptions are the `--help` texts. This module owns how such a model is filled:

    cfg = load_layers(InferConfig, [("run.yaml", read_yaml("run.yaml"))], overrides={"shots": 1})

Layers are merged in order (later wins); an override of None means "not given". Any problem (an unknown option,
a wrong type, a missing required option) is one `ConfigError` line naming the option and where it came from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from iadr1.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML (or JSON) mapping from `path`, keys with `-` read as `_`; a missing file, malformed YAML or a
    non-mapping is a one-line ConfigError."""
    import yaml

    from iadr1.data.io import read_text

    path = Path(path)
    text = read_text(path, "config file", error=ConfigError)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a YAML mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def parse_set_options(items: Sequence[str] | None) -> dict[str, Any]:
    """`--set KEY=VALUE` pairs, values read as YAML (`--set lora=true`, `--set trl_args={seed: 1}`)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    return out


def flag(name: str) -> str:
    """The command-line spelling of a config field: `max_pixels` -> `--max-pixels`."""
    return "--" + name.replace("_", "-")


def one_line(err: ValidationError, sources: Sequence[str] = ()) -> str:
    """The first problem of a pydantic ValidationError as one line naming the option (unknown options first,
    since a typo usually explains the rest), and the files it came from."""
    errors = sorted(err.errors(), key=lambda x: x["type"] != "extra_forbidden")
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "config"
    where = f" ({' + '.join(sources)})" if sources else ""
    if first["type"] == "missing":
        return f"option {loc!r} is required: pass {flag(str(first['loc'][0]))} or set it in the config{where}"
    if first["type"] == "extra_forbidden":
        return f"unknown option {loc!r}{where}"
    more = len(errors) - 1
    tail = f" [+{more} more]" if more else ""
    msg = first["msg"].removeprefix("Value error, ")  # a validator's own message, without pydantic's prefix
    return f"option {loc!r}: {msg}{where}{tail}"


def validate(cls: type[M], data: dict[str, Any], sources: Sequence[str] = ()) -> M:
    """`cls.model_validate(data)`, its first problem as a one-line ConfigError."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(one_line(e, sources)) from None


def load_layers(
    cls: type[M], layers: Sequence[tuple[str, dict[str, Any]]] = (), overrides: dict[str, Any] | None = None
) -> M:
    """Merge `layers` (`(source name, mapping)`, lowest first), then the overrides that are not None, and
    validate into `cls`."""
    merged: dict[str, Any] = {}
    for _, data in layers:
        merged.update(data)
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate(cls, merged, [name for name, _ in layers])


def inherit_descriptions(cls: type[BaseModel]) -> None:
    """Give each field of `cls` that has no description its nearest base class's: a subclass that only changes a
    default (`batch_size: int = Field(4, ge=1)`) keeps the help text. Call it from `__pydantic_init_subclass__`."""
    for name, info in cls.model_fields.items():
        if info.description:
            continue
        for base in cls.__mro__[1:]:
            parent = getattr(base, "model_fields", {}).get(name)
            if parent is not None and parent.description:
                info.description = parent.description
                break
