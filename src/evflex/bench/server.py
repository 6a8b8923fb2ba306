"""A server under test in a child process, watched with psutil: ``evflex serve``
or one of the baselines of :mod:`evflex.bench.baselines`.

The child is started through a tiny ``python -c`` wrapper that first raises
its open-file limit (one socket per station), then runs the normal CLI. Its
output goes to a log file, never to a pipe nobody reads. RSS is sampled every
half second from start to stop; CPU time is read on demand, so the caller can
take the user+system delta over exactly its measurement window.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from evflex.app import Runtime
from evflex.bench.baselines import raise_nofile_limit
from evflex.config import Settings
from evflex.tuning import tune_gc

__all__ = ["BaselineProcess", "ServerProcess", "free_port", "raise_nofile_limit"]


# Runs in the server process. Lean on purpose: importing the benchmark's
# modules there would add their memory to the measured RSS (the baselines
# module needs only the standard library and websockets, which serve loads anyway).
_WRAPPER = """\
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if our parent ignores it
from evflex.bench.baselines import raise_nofile_limit
raise_nofile_limit()
from evflex.cli import app
sys.argv[0] = "evflex"
app()
"""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ChildServer:
    """An OCPP server in a child process on loopback, sampled with psutil.

    Subclasses say what to run (:meth:`command`) and when it is ready
    (:meth:`_ready`); everything measured is measured the same way for all.
    """

    name = "server"

    def __init__(self, log_path: Path, host: str = "127.0.0.1") -> None:
        self.log_path = log_path
        self.host = host
        self.ocpp_port = free_port(host)
        self.proc: subprocess.Popen | None = None
        self.ps: psutil.Process | None = None
        self.peak_rss = 0
        self.last_rss = 0
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self._log = None

    @property
    def ocpp_url(self) -> str:
        return f"ws://{self.host}:{self.ocpp_port}/ocpp"

    @property
    def api_url(self) -> str | None:
        return None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Anything to do before the process starts."""

    def _ready(self, client: httpx.Client) -> bool:
        """True once the server accepts OCPP connections."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            return s.connect_ex((self.host, self.ocpp_port)) == 0

    def start(self, ready_timeout: float = 60.0) -> None:
        """Spawn the server and wait until it is ready."""
        self._prepare()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # Plain tracebacks in the log (not typer's boxes), wide lines, no colour codes.
        env = dict(
            os.environ,
            COLUMNS="200",
            NO_COLOR="1",
            PYTHONUNBUFFERED="1",
            _TYPER_STANDARD_TRACEBACK="1",
        )
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            # Its own process group: a Ctrl-C in the terminal reaches only us, and we
            # stop the server once, after the stations are gone.
            start_new_session=True,
        )
        self.ps = psutil.Process(self.proc.pid)
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._sampler.start()
        deadline = time.monotonic() + ready_timeout
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    if self._ready(client):
                        return
                except (httpx.HTTPError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} not ready after {ready_timeout:.0f} s:\n{self.log_tail()}"
                    )
                time.sleep(0.1)

    def _sample(self) -> None:
        while not self._stop_sampling.is_set():
            try:
                rss = self.ps.memory_info().rss if self.ps is not None else 0
            except psutil.Error:
                return
            self.last_rss = rss
            self.peak_rss = max(self.peak_rss, rss)
            self._stop_sampling.wait(0.5)

    def rss_now(self) -> int | None:
        """The server's resident set size right now (bytes)."""
        try:
            return self.ps.memory_info().rss if self.ps is not None else None
        except psutil.Error:
            return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the server has used so far (all its threads)."""
        try:
            t = self.ps.cpu_times() if self.ps is not None else None
        except psutil.Error:
            return None
        return None if t is None else t.user + t.system

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGINT (a clean shutdown), then SIGTERM, then SIGKILL; returns the exit code."""
        self._stop_sampling.set()
        proc = self.proc
        code = None
        if proc is not None:
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (None, 5.0)):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    if sig is None:
                        proc.kill()
                    else:
                        proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(wait)
            code = proc.poll()
        if self._sampler is not None:
            self._sampler.join(2)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerProcess(ChildServer):
    """``evflex serve`` on loopback with free ports; use as a context manager."""

    name = "evflex serve"

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        heartbeat_interval: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(log_path, host)
        self.database_url = database_url
        self.heartbeat_interval = heartbeat_interval
        self.http_port = free_port(host)
        self.api_token: str | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.http_port}/api/v1"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-c",
            _WRAPPER,
            "serve",
            "--host",
            self.host,
            "--ocpp-port",
            str(self.ocpp_port),
            "--http-port",
            str(self.http_port),
            "--database-url",
            self.database_url,
            "--allow-unknown-stations",
            "--log-level",
            "warning",
        ]
        if self.heartbeat_interval is not None:
            cmd += ["--heartbeat-interval", str(self.heartbeat_interval)]
        return cmd

    def _prepare(self) -> None:
        self.api_token = self._admin_token()

    def _ready(self, client: httpx.Client) -> bool:
        return client.get(f"{self.api_url}/health").status_code == 200

    def _admin_token(self) -> str:
        """``evflex token create --role admin`` on the server's database (last line)."""
        out = subprocess.run(
            [sys.executable, "-c", _WRAPPER, "token", "create", "--role", "admin",
             "--name", "benchmark", "--database-url", self.database_url],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[-1]


class BaselineProcess(ChildServer):
    """A baseline server of :mod:`evflex.bench.baselines` (``echo`` or ``ocpp-lib``)."""

    def __init__(self, kind: str, log_path: Path, host: str = "127.0.0.1") -> None:
        super().__init__(log_path, host)
        self.kind = kind
        self.name = f"baseline {kind}"
        self.api_token = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "evflex.bench.baselines", self.kind,
            "--host", self.host, "--port", str(self.ocpp_port),
        ]  # fmt: skip


async def in_process_node(database_url: str | None, prefix: str, **settings):
    """A node in this process on free ports, on ``database_url`` or a fresh SQLite file.

    Returns the started Runtime and the temporary directory to clean up after
    ``rt.stop()``. Keyword arguments override the benchmark defaults.
    """
    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    values = {
        "host": "127.0.0.1",
        "ocpp_port": 0,
        "http_port": 0,
        "database_url": database_url or f"sqlite+aiosqlite:///{tmp.name}/bench.db",
        "initial_full_power_s": 0,
        "rebalance_interval_s": 3600,
        "response_timeout": 30,
        "ws_ping_interval": None,
        **settings,
    }
    rt = Runtime(Settings(**values))
    await rt.start()
    # collected as `evflex serve` is (see tune_gc); undone by stop_in_process_node
    tmp.gc_threshold = gc.get_threshold()  # type: ignore[attr-defined]
    tune_gc()
    return rt, tmp


async def stop_in_process_node(rt, tmp) -> None:
    """Stop a node of :func:`in_process_node` and give this process its collector back."""
    try:
        await rt.stop()
    finally:
        gc.unfreeze()
        gc.set_threshold(*tmp.gc_threshold)
        tmp.cleanup()


def api_client(rt, timeout: float):
    """An HTTP client for the in-process node's API, with an ephemeral admin token."""
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{rt.http_port}/api/v1",
        timeout=timeout,
        headers={"Authorization": f"Bearer {rt.auth.ephemeral_token('admin', 'benchmark')}"},
    )
