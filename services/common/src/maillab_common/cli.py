"""What the three command lines share: how they print, fail, and run.

Every line a CLI prints goes through `say`, so that message content can never act on the
terminal (controls are escaped by `visible`, rich markup is printed literally, nothing is
wrapped). `fail` is the one way to stop on bad input: one line, a non-zero exit, no
traceback. `run_app` runs a typer app so that a usage error is one line too.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer 0.27+ vendors click

from maillab_common.text import visible

EXIT_OK = 0
EXIT_USAGE = 2

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def say(text: str, *, error: bool = False, label: str = "") -> None:
    """Print one line: its controls escaped, its markup literal, never wrapped."""
    line = Text(visible(text))
    if label:
        line = Text.assemble((label, "bold red"), " ", line)
    (err if error else out).print(line, soft_wrap=True, highlight=False)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Stop the command with one `error:` line on stderr and exit `code`."""
    say(message, error=True, label="error:")
    raise typer.Exit(code)


def env_help(text: str, variable: str) -> str:
    """An option's help, naming the environment variable that supplies its default.

    In parentheses: typer renders help as rich markup, where "[env X]" would be a tag and vanish.
    """
    return f"{text} (env {variable})"


def run_app(app: typer.Typer, prog_name: str, *, aborted_code: int = 1, args: list[str] | None = None) -> NoReturn:
    """Run a typer app on `args` (the command line's by default); a usage error is one line (typer would draw a
    panel), exit code 2."""
    try:
        code = app(args=args, prog_name=prog_name, standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()
        code = exc.exit_code
    except ClickException as exc:
        context = getattr(exc, "ctx", None)
        hint = f" (see: {context.command_path} --help)" if context is not None else ""
        say(exc.format_message() + hint, error=True, label="error:")
        code = exc.exit_code
    except typer.Abort:
        say("aborted", error=True)
        code = aborted_code
    sys.exit(code if isinstance(code, int) else EXIT_OK)
