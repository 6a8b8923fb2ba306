"""The README's curl examples run top to bottom against a fresh node."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def curl_examples() -> list[str]:
    """The README's curl commands, backslash-continued lines joined, in order."""
    text = README.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith("curl ")]


@pytest.mark.skipif(not shutil.which("curl"), reason="no curl")
async def test_readme_curl_examples_run_in_order(node):
    examples = curl_examples()
    assert len(examples) >= 8
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
