"""The `iadr1` command line: a thin shell over the library. Each subcommand lives in its own module and imports
heavy libraries (torch, vLLM) only inside the command, so `iadr1 --help` stays instant."""

from __future__ import annotations

import sys

import typer

from iadr1 import __version__
from iadr1.cli import env as _env
from iadr1.errors import IADR1Error

app = typer.Typer(
    name="iadr1",
    help="Post-train vision-language models to detect, locate and name defects in industrial images (IAD-R1).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"iadr1 {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """iadr1: convert datasets, build training data, train (sft, grpo), infer and evaluate."""


app.command("env", help="Print versions of Python, torch, transformers, trl, peft, vllm, deepspeed and devices.")(
    _env.env
)

# Subcommands register here, one line each, as their modules land.


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print as one red line and exit 1, never as a traceback."""
    from rich.console import Console

    try:
        app(args=argv, standalone_mode=False)
    except IADR1Error as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
