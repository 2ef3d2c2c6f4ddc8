"""What every command shares: error translation, verbosity and progress-bar settings."""

from __future__ import annotations

import click

from ..errors import DsprepError, UsageError


class DsprepGroup(click.Group):
    """A click group that prints dsprep's errors as one line ('Error: ...') without a traceback.

    Exit codes: 0 ok, 1 failed, 2 usage (a bad argument or option).
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise click.UsageError(str(exc), ctx=ctx) from exc
        except DsprepError as exc:
            raise click.ClickException(str(exc)) from exc


def is_quiet(ctx: click.Context | None = None) -> bool:
    """True when ``-q`` was given to the top-level command."""
    ctx = ctx or click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return bool(root and root.obj and root.obj.get("quiet"))


def verbosity(ctx: click.Context | None = None) -> int:
    """How many ``-v`` were given to the top-level command."""
    ctx = ctx or click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return int(root.obj.get("verbose", 0)) if root and root.obj else 0


def say(message: str = "", *, err: bool = False) -> None:
    """Print a line of a command's summary (suppressed by ``-q`` unless it goes to stderr)."""
    if err or not is_quiet():
        click.echo(message, err=err)


def show_progress() -> bool:
    """Whether long work shows a progress bar (not with ``-q``)."""
    return not is_quiet()


def format_table(rows: list[list[object]], header: list[str]) -> str:
    """Render rows as a plain, right-aligned text table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
