"""The `iadr1` command line: a thin shell over the library. Each subcommand lives in its own module and imports
heavy libraries (torch, vLLM) only inside the command, so `iadr1 --help` stays instant."""

from __future__ import annotations

import os
import sys

import typer

from iadr1 import __version__
from iadr1.cli import annotate as _annotate
from iadr1.cli import build_data as _build_data
from iadr1.cli import convert as _convert
from iadr1.cli import demo as _demo
from iadr1.cli import env as _env
from iadr1.cli import eval as _eval
from iadr1.cli import infer as _infer
from iadr1.cli import predict as _predict
from iadr1.cli import serve as _serve
from iadr1.cli import train as _train
from iadr1.cli import webapp as _webapp
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
    """iadr1: convert datasets, annotate them, build training data, train (sft, grpo), infer and evaluate."""
    if local_rank is not None:  # the `deepspeed` launcher inserts --local_rank=N before the subcommand
        os.environ.setdefault("LOCAL_RANK", str(local_rank))


app.command("env", help="Print versions of Python, torch, transformers, trl, peft, vllm, deepspeed and devices.")(
    _env.env
)

# Subcommands register here, one line each. Command modules import torch, transformers and vLLM only inside their
# functions, so importing them here keeps `iadr1 --help` instant.
app.command("convert")(_convert.convert)
app.command("annotate")(_annotate.annotate)
app.command("build-data")(_build_data.build_data)
app.command("sft")(_train.sft)
app.command("grpo")(_train.grpo)
app.command("merge")(_train.merge)
app.command("infer")(_infer.infer)
app.command("predict")(_predict.predict)
app.command("serve")(_serve.serve)
app.command("app")(_webapp.app)
app.add_typer(_eval.app, name="eval")
app.command("demo")(_demo.demo)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print as one red line and exit 1, never as a traceback."""
    from rich.console import Console
    from rich.markup import escape

    try:
        app(args=argv, standalone_mode=False)
    except IADR1Error as e:  # the message is text, never markup: `pip install 'iadr1[app]'` keeps its brackets
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
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
