"""Tables, errors and exit codes for the CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelplane import errors

console = Console()
err_console = Console(stderr=True)

# Exit codes scripts can rely on (docs/cli.md).
EXIT_CODES: dict[type[errors.ModelplaneError], int] = {
    errors.InvalidInput: 2,
    errors.UnsupportedModel: 2,
    errors.PayloadTooLarge: 2,
    errors.NotFound: 3,
    errors.Unauthenticated: 4,
    errors.PermissionDenied: 4,
    errors.Conflict: 5,
    errors.Unavailable: 6,
    errors.Overloaded: 6,
    errors.DeadlineExceeded: 6,
    errors.StorageFull: 6,
}


def exit_code(exc: errors.ModelplaneError) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


@contextmanager
def handled() -> Iterator[None]:
    """Turn errors into a one-line message and a stable exit code."""
    try:
        yield
    except errors.ModelplaneError as exc:
        # escaped: a message may hold brackets, e.g. pip install 'modelplane[torch]'
        err_console.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False)
        raise typer.Exit(exit_code(exc)) from None


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    t = Table(title=title, header_style="bold")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*("-" if v is None else str(v) for v in row))
    console.print(t)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


STATE_COLORS = {
    "ready": "green", "healthy": "green", "degraded": "yellow", "pending": "yellow",
    "starting": "yellow", "draining": "yellow", "cordoned": "yellow", "updating": "cyan",
    "scaled to zero": "cyan", "stopped": "cyan", "active": "green",
}  # fmt: skip


def state_style(state: str) -> Callable[[str], str]:
    color = STATE_COLORS.get(state, "red")
    return lambda text: f"[{color}]{text}[/{color}]"


def _print_candidates(candidates: list[dict[str, Any]], budget: float) -> None:
    rows = []
    for c in candidates:
        if "error" in c:
            rows.append([c["name"], "-", "-", "-", "-", f"not applicable: {c['error']}"])
            continue
        verdict = "kept" if c.get("chosen") else ("within" if c["within_budget"] else "over")
        rows.append([c["name"], f"{c['speedup_batch_1']:.2f}x", f"{c['speedup_batch_32']:.2f}x",
                     human_size(c["size"]), f"{c['accuracy_drop']:.2%}", verdict])  # fmt: skip
    table(["CANDIDATE", "SPEEDUP B1", "SPEEDUP B32", "SIZE", "CHANGED", "BUDGET"], rows,
          title=f"candidates (at most {budget:.2%} of predictions changed)")  # fmt: skip


def print_report(report: dict[str, Any]) -> None:
    """A parity (or optimization) report as a table."""
    if candidates := (report.get("optimization") or {}).get("candidates"):
        _print_candidates(candidates, report["optimization"]["max_accuracy_drop"])
    if optimization := report.get("optimization"):
        rows = [
            [size.replace("_", " "), f"{v['before_ms']:.3f}", f"{v['after_ms']:.3f}",
             f"{v['speedup']:.2f}x"]
            for size, v in optimization["latency"].items()
        ]  # fmt: skip
        table(["", "BEFORE ms", "AFTER ms", "SPEEDUP"], rows,
              title=f"latency, 1 thread (size {human_size(optimization['size_before'])} -> "
              f"{human_size(optimization['size_after'])})")  # fmt: skip
    verdict = "[green]passed[/green]" if report.get("passed") else "[red]failed[/red]"
    kind = "accuracy vs the source version" if "optimization" in report else "parity"
    rows = []
    for out in report.get("outputs", []):
        if "rows_changed" in out:
            changed = f"{out['rows_changed']} of {out['rows']} predictions changed"
            largest = out["max_abs_error"]
            largest = "-" if largest is None else f"{largest:.3g}"
            measure = f"{changed} ({out['accuracy_drop']:.2%}), max abs {largest}"
        elif "label_agreement" in out:
            measure = f"label agreement {out['label_agreement']:.2%}"
        elif "max_abs_error" in out:
            measure = f"max abs {out['max_abs_error']:.3g}, max rel {out['max_rel_error']:.3g}"
        else:
            measure = out.get("problem") or f"{out.get('mismatches', 0)} mismatches"
        rows.append([out["name"], measure, "yes" if out["passed"] else "NO"])
    table(
        ["OUTPUT", "DIFFERENCE", "WITHIN TOLERANCE"],
        rows,
        title=f"{kind} {verdict} ({report.get('inputs', '')}, batch {report.get('batch', '')})",
    )
