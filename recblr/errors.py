"""The one exception type for problems a user can fix, and the one way a CLI reports it."""

from __future__ import annotations

import os
import sys
from functools import wraps


class RecblrError(Exception):
    """Bad input (file, id, shape, checkpoint): the CLI prints it as one line and exits 2.

    The message names the input and says how to fix it. A subclass may set another
    `exit_code` (a failed verification exits 1).
    """

    exit_code = 2


def _prog() -> str:
    """The running command as the user typed it ("recblr export"), from the click context that
    typer is invoking (typer >= 0.24 carries its own copy of click); else argv[0]."""
    import importlib

    for module in ("typer._click.globals", "click"):
        try:
            ctx = importlib.import_module(module).get_current_context(silent=True)
        except (ImportError, AttributeError):
            continue
        if ctx is not None:
            return ctx.command_path
    return os.path.basename(sys.argv[0]) or "recblr"


def user_errors(fn):
    """Every CLI command's one error-to-exit-code path: a `RecblrError` becomes one line on
    stderr (`PROG: error: message`) and its `exit_code`, never a traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RecblrError as e:
            import typer  # only on the error path: keeps this module import-free

            msg = " ".join(str(e).split()) or type(e).__name__
            print(f"{_prog()}: error: {msg}", file=sys.stderr, flush=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper
