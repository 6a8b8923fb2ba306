"""Where a benchmark's JSON result goes by default, and how it is written."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("bench-results")


def stamped_path(name: str, when: datetime | None = None) -> Path:
    """``bench-results/<name>-<UTC time, e.g. 20260301T080000Z>.json`` (default: now)."""
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return RESULTS_DIR / f"{name}-{stamp}.json"


def write_json(out: Path, result: dict[str, Any], **dumps: Any) -> None:
    """The result as indented JSON with a final newline; missing folders are made."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, **dumps) + "\n")
