"""The documentation's curl examples run top to bottom against a fresh node.

They are read from the README, then docs/api.md, then docs/user-guide.md: the
order in which a reader meets them (the first registers a station and the
later ones build a site on the stations registered before).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "api.md", ROOT / "docs" / "user-guide.md"]


def curl_lines(page: Path) -> list[str]:
    """A page's curl commands, backslash-continued lines joined, in order."""
    text = page.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith("curl ")]


def curl_examples() -> list[str]:
    return [example for page in PAGES for example in curl_lines(page)]


def test_every_page_with_curl_examples_is_run():
    pages = [ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    unrun = [p.relative_to(ROOT).as_posix() for p in pages if p not in PAGES and curl_lines(p)]
    assert unrun == []


@pytest.mark.skipif(not shutil.which("curl"), reason="no curl")
async def test_doc_curl_examples_run_in_order(node):
    examples = curl_examples()
    assert len(examples) >= 11
    token = node.rt.auth.ephemeral_token("admin")
    await node.http.post("/api/v1/stations", json={"id": "CP-001"})  # `evflex station add`
    base = f"127.0.0.1:{node.rt.http_port}"
    for example in examples:  # run by bash, as a reader would ($TOKEN, $(date ...))
        command = example.replace("localhost:8000", base).replace(
            "curl ", "curl -sS -w '\\n%{http_code}' ", 1
        )
        run = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", command],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "TOKEN": token},
        )
        body, _, status = run.stdout.rpartition("\n")
        assert status.startswith("2"), f"{example}\n-> {status} {body} {run.stderr}"
