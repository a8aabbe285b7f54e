"""The typer application and what every command shares: the console and one-line errors."""

from __future__ import annotations

import sys

import click
import typer
from rich.console import Console
from rich.text import Text

from steermoe.errors import SteerMoEError

__all__ = ["app", "config_app", "console", "err_console", "run_app"]

app = typer.Typer(
    name="steermoe",
    help="Find the experts of an MoE LLM that carry unsafe behaviour, and fine-tune only those.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect run configurations.", no_args_is_help=True)
app.add_typer(config_app, name="config")

# No markup: what we print is data (paths like ``activations_[model]_[safety].parquet``), never style
# tags; styles are given as arguments instead.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def _error(message: str) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), f" {message}"), highlight=False, soft_wrap=True)


def run_app(argv: list[str] | None = None) -> int:
    """Run the CLI; errors meant for users become one line on stderr and an exit code."""
    try:
        result = app(args=argv, standalone_mode=False, prog_name="steermoe")
    except SteerMoEError as e:
        _error(str(e))
        return e.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 130
    except click.UsageError as e:  # one line, like every other user error
        hint = f"; see `{e.ctx.command_path} --help`" if e.ctx is not None else ""
        _error(f"{e.format_message()}{hint}")
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except OSError as e:  # a full disk, a read-only or missing folder: the file and the fix, not a traceback
        from steermoe.errors import describe_os_error

        _error(describe_os_error(e))
        return 1
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run_app())
