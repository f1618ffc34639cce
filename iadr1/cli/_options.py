"""Helpers shared by the CLI commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

from iadr1.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import ValidationError


def option_error(e: ValidationError) -> ConfigError:
    """The first error of a config built from command-line options, as one line naming the option:
    `--n-train: Input should be greater than 0`."""
    err = e.errors()[0]
    return ConfigError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}")
