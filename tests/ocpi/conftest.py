"""Fixtures for the OCPI tests.

``peer_emsp``: an independent OCPI 2.2.1 eMSP, ``extrawest-ocpi`` from PyPI, running as
a separate process (tests/ocpi/peer/emsp_peer.py). The library pins FastAPI 0.101 and
pydantic 1, so it gets a virtual environment of its own, made once from PyPI in a cache
folder outside the repository (``EVFLEX_TEST_CACHE``, default ~/.cache/evflex-tests) and
reused while its requirements stay the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

#: What the peer's environment holds (exact versions: the cache is keyed by them).
PEER_REQUIREMENTS = ("extrawest-ocpi==2025.7.16", "uvicorn==0.55.0", "httpx==0.24.1")
PEER_SCRIPT = Path(__file__).parent / "peer" / "emsp_peer.py"
PEER_COUNTRY_CODE, PEER_PARTY_ID = "DE", "XWE"


def peer_cache_root() -> Path:
    return Path(os.environ.get("EVFLEX_TEST_CACHE") or Path.home() / ".cache" / "evflex-tests")


def peer_venv() -> Path:
    """The peer's virtual environment: made from PyPI on first use (a marker file, written
    last, says it is complete), then reused. Fails, not skips, when it cannot be made."""
    key = "\n".join((*PEER_REQUIREMENTS, f"{sys.version_info.major}.{sys.version_info.minor}"))
    venv = peer_cache_root() / f"ocpi-peer-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    marker = venv / "evflex-complete"
    if marker.exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be making it right now
        if marker.exists():
            return venv
        subprocess.run(["rm", "-rf", str(venv)], check=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", *PEER_REQUIREMENTS],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.fail(
                f"cannot install the OCPI peer ({' '.join(PEER_REQUIREMENTS)}) from PyPI "
                f"into {venv} (is PyPI reachable?):\n{done.stderr[-3000:]}",
                pytrace=False,
            )
        marker.write_text("\n".join(PEER_REQUIREMENTS) + "\n")
    return venv


class PeerEmsp:
    """The running extrawest-ocpi eMSP, and its test-only control API (all async: the
    peer calls the node, which runs in the test's own event loop)."""

    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.base_url = f"http://127.0.0.1:{port}"
        self.versions_url = f"{self.base_url}/ocpi/versions"
        self.country_code, self.party_id = PEER_COUNTRY_CODE, PEER_PARTY_ID

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    async def control(self, method: str, path: str, json: Any = None) -> Any:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
            r = await client.request(method, f"/control/{path}", json=json)
        assert r.status_code == 200, f"peer /control/{path}: {r.status_code} {r.text}"
        return r.json()

    async def state(self, partner: str | None = None) -> dict:
        """What the peer knows; with ``partner`` (a node's versions URL), only what that
        node sent it."""
        return await self.control("GET", "state" + (f"?partner={partner}" if partner else ""))

    async def reset(self) -> None:
        """Forget every partner, token and object (the process stays)."""
        await self.control("POST", "reset")

    async def invite(self) -> dict:
        """A token A a node may register with us with: {versions_url, token}."""
        return await self.control("POST", "invite")

    async def register_with(self, versions_url: str, token: str) -> dict:
        """The peer registers with a node (its versions URL and token A); the peer's
        account of each step."""
        return await self.control(
            "POST", "register-with", {"versions_url": versions_url, "token": token}
        )

    async def unregister(self, partner: str) -> dict:
        """The peer DELETEs its credentials at the node: {status_code, body}."""
        return await self.control("POST", "unregister", {"partner": partner})

    async def issue_token(self, uid: str, **fields: Any) -> dict:
        """One of the peer's own tokens (whitelist, valid, kind: its type)."""
        return await self.control("POST", "tokens", {"uid": uid, **fields})

    async def push_token(self, partner: str, uid: str) -> dict:
        """The library's own push of one of its tokens to a node."""
        return await self.control("POST", "push-token", {"partner": partner, "uid": uid})

    async def put_token(self, partner: str, uid: str) -> dict:
        """The same PUT, its URL joined with a slash (see emsp_peer.control_put_token)."""
        return await self.control("POST", "put-token", {"partner": partner, "uid": uid})

    async def command(self, partner: str, command: str, **fields: Any) -> dict:
        return await self.control(
            "POST", "command", {"partner": partner, "command": command, **fields}
        )

    async def command_result(self, uid: str) -> dict | None:
        return await self.control("GET", f"command-result/{uid}")

    async def requests(
        self, partner: str, method: str | None = None, module: str | None = None
    ) -> list[dict]:
        """The OCPI requests a node made to the peer (partner, method, path, status, body,
        answer)."""
        found = (await self.state(partner))["requests"]
        return [
            r for r in found
            if (method is None or r["method"] == method)
            and (module is None or f"/ocpi/emsp/2.2.1/{module}" in r["path"])
        ]  # fmt: skip


def _read_port(process: subprocess.Popen, timeout: float) -> int | None:
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if found and found[0].startswith("PORT "):
        return int(found[0].split()[1])
    return None


@pytest.fixture(scope="session")
def peer_emsp(tmp_path_factory) -> Iterator[PeerEmsp]:
    """The extrawest-ocpi eMSP process, started once per test run."""
    venv = peer_venv()
    log = tmp_path_factory.mktemp("ocpi-peer") / "peer.log"
    workdir = log.parent  # the library reads a .env from its working folder: an empty one
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [str(venv / "bin" / "python"), str(PEER_SCRIPT),
             "--country-code", PEER_COUNTRY_CODE, "--party-id", PEER_PARTY_ID],
            stdout=subprocess.PIPE, stderr=err, cwd=workdir, text=True,
        )  # fmt: skip
    try:
        port = _read_port(process, timeout=60)
        if port is None:
            process.kill()
            pytest.fail(f"the OCPI peer did not start:\n{log.read_text()[-3000:]}", pytrace=False)
        peer = PeerEmsp(process, port, log)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{peer.base_url}/control/state", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"the OCPI peer does not answer:\n{peer.log_tail()}", pytrace=False)
            time.sleep(0.05)
        yield peer
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
