"""Helpers shared by the CLI commands."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer

from iadr1.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import ValidationError


def option_error(e: ValidationError, flags: dict[str, str] | None = None) -> ConfigError:
    """The first error of a config built from command-line options, as one line naming the option by its flag:
    `--n-train: Input should be greater than 0` (a YAML config's errors: `iadr1.config.one_line`). `flags` maps
    the fields whose flag is not `--field-name` (`{"test_files": "--test-file"}`)."""
    from iadr1.config import flag

    err = e.errors()[0]
    field = str(err["loc"][0])
    return ConfigError(f"{(flags or {}).get(field) or flag(field)}: {err['msg'].removeprefix('Value error, ')}")


# ---------------------------------------------------------------------------------------------------------------------
# Options generated from a config model: the help text is the field's description, the default the model's own.
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Opt:
    """A command-line option for config field `field`: its flags and the type typer parses (None = not given).

    `help` is only for an option that is not a field (or whose CLI reading differs); otherwise the field's
    description is the help, so it is written once, on the config model.
    """

    field: str
    flags: tuple[str, ...]
    type: Any
    help: str | None = None
    hidden: bool = False


def field_help(cls: type, name: str, with_default: bool = False) -> str:
    """The `--help` text of config field `name` of `cls`: its description, then, `with_default`, its default (a
    command that declares its typer options itself lets typer show the default)."""
    info = cls.model_fields[name]
    text = info.description or ""
    default = info.get_default(call_default_factory=True)
    if with_default and not info.is_required() and default not in (None, "", [], ()):
        shown = ", ".join(str(getattr(d, "name", d)) for d in default) if isinstance(default, list) else default
        text += f" (default: {shown})"
    return text


def _help(cls: type, opt: Opt) -> str:
    if opt.help is not None or opt.field not in cls.model_fields:
        return opt.help or ""
    return field_help(cls, opt.field, with_default=opt.type is not bool)


def config_command(
    cls: type, options: list[Opt], body: Callable[..., None], name: str, doc: str
) -> Callable[..., None]:
    """A typer command whose parameters are `options` (typer.Option defaults of None, help from `cls`'s fields)
    and which calls `body(**values)`. The signature is built here so that commands sharing a config (`sft`,
    `grpo`) declare each option once."""

    def command(**values: Any) -> None:
        body(**values)

    params = [
        inspect.Parameter(
            o.field,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None,
                *o.flags,
                help=_help(cls, o),
                hidden=o.hidden,
                show_default=False,
                metavar="<text>" if o.type == list[str] else None,
                # a bool option without a --no- spelling is a plain switch
                is_flag=True if o.type is bool and not any("/" in f for f in o.flags) else None,
            ),
            annotation=o.type | None if o.type is not None else Any,
        )
        for o in options
    ]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = command.__qualname__ = name
    command.__doc__ = doc
    return command


def deprecated(console_err: Callable[[str], None], old: str, new: str) -> None:
    """One line for an option spelling kept for one release."""
    console_err(f"warning: {old} is deprecated and will be removed in the next release; use {new}")


def renamed(value: Any, old_value: Any, old: str, new: str) -> Any:
    """The value of option `new`, or of its old spelling `old` (hidden, kept for one release) with a warning line
    on stderr when that was the one given."""
    if old_value is None:
        return value
    import sys

    deprecated(lambda text: print(text, file=sys.stderr), old, new)
    return old_value


def warn_versions(command: str) -> None:
    """Packages outside the versions iadr1 is tested with (`iadr1.versions`), one line each on stderr, before a long
    run of `command` (sft, grpo, infer) starts."""
    from rich.console import Console

    from iadr1.versions import STAGE_PACKAGES, warn_outside_tested

    err = Console(stderr=True, highlight=False)
    warn_outside_tested(lambda line: err.print(f"[bold yellow]{line}[/]", soft_wrap=True), STAGE_PACKAGES[command])
