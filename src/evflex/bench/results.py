"""Where a benchmark's JSON result goes by default, and how it is written."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

RESULTS_DIR = Path("bench-results")


def stamped_path(name: str, when: datetime | None = None) -> Path:
    """``bench-results/<name>-<UTC time, e.g. 20260301T080000Z>.json`` (default: now)."""
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return RESULTS_DIR / f"{name}-{stamp}.json"


def write_json(out: Path, result: dict[str, Any], **dumps: Any) -> None:
    """The result as indented JSON with a final newline; missing folders are made."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, **dumps) + "\n")


def wide_console(width: int) -> Console:
    """A console for a benchmark's tables: at least ``width`` columns when it writes to a
    log file or a pipe (a terminal keeps its own width)."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, width))


def validated(config: Any, console: Console) -> None:
    """``config.validate()``; a ValueError is printed and exits with code 2."""
    try:
        config.validate()
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
