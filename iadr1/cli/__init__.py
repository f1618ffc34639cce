"""The `iadr1` command line: a thin shell over the library. Each subcommand lives in its own module and imports
heavy libraries (torch, vLLM) only inside the command, so `iadr1 --help` stays instant."""

from __future__ import annotations

import os
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
    local_rank: int | None = typer.Option(None, "--local_rank", "--local-rank", hidden=True),
) -> None:
    """iadr1: convert datasets, build training data, train (sft, grpo), infer and evaluate."""
    if local_rank is not None:  # the `deepspeed` launcher inserts --local_rank=N before the subcommand
        os.environ.setdefault("LOCAL_RANK", str(local_rank))


app.command("env", help="Print versions of Python, torch, transformers, trl, peft, vllm, deepspeed and devices.")(
    _env.env
)

# Subcommands register here, one line each, as their modules land.
app.command("build-data")(__import__("iadr1.cli.build_data", fromlist=["build_data"]).build_data)
app.command("convert")(__import__("iadr1.cli.convert", fromlist=["convert"]).convert)
app.add_typer(__import__("iadr1.cli.eval", fromlist=["app"]).app, name="eval")
app.command("infer")(__import__("iadr1.cli.infer", fromlist=["infer"]).infer)


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
        try:  # typer >= 0.29 runs on its own vendored click, whose errors are not `click.ClickException`s
            from typer._click.exceptions import ClickException
        except ImportError:
            from click import ClickException

        if isinstance(e, ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
