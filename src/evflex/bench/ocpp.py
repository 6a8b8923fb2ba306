"""``evflex bench ocpp``: how many stations can one CSMS process serve, and how fast?

The benchmark starts ``evflex serve`` as a child process (or targets a server
that is already running), opens K simulated stations from one or more
generator processes at a fixed connection rate, lets them boot and charge,
and then measures a fixed window: responses per second, request->response
latency, errors, and the server's CPU time and peak RSS. It prints a table
and writes everything it measured, failures included, to a JSON file.

The simulated stations (see :mod:`evflex.bench.loadgen`) behave like real
ones: BootNotification, a StatusNotification per connector, Heartbeats, and
on EVSE 1 back-to-back charging sessions with periodic meter values. The
window stands for ``window_minutes`` of station life (an hour by default); a
session lasts 5 to 20 of those minutes, with up to one minute between the
EV leaving and the next one plugging in. Other message mixes and load modes
(closed loop, open loop on a fixed schedule) are described in
:mod:`evflex.bench.loadgen`. Stations stay idle between their boot and the
window; the server's RSS before any connected and with all of them idle
gives the memory per connected station (``rss_per_station_kb``).

``--compare`` runs the same generator with the same settings against four
servers in turn, each a child process measured the same way: a raw
websockets echo server (the limit), a bare server on the ``ocpp`` library
(see :mod:`evflex.bench.baselines`), ``evflex serve`` on SQLite and on
PostgreSQL (a fresh database per run, skipped when no server answers). Each
row carries its msgs/s as a ratio of the bare library's and of the echo's.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import platform
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import wait as wait_connections
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import psutil
import typer

from evflex import __version__
from evflex.bench.frames import ID_TOKEN_COUNT, id_token
from evflex.bench.loadgen import MIXES, MODES, LoadSettings, split_stations, worker_main
from evflex.bench.results import stamped_path, validated, wide_console, write_json
from evflex.bench.server import BaselineProcess, ChildServer, ServerProcess, raise_nofile_limit

REQUIRED_KEYS = (
    "stations",
    "connected",
    "msgs_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "server_peak_rss_mb",
    "connect_time_s",
    "server_cpu_percent",
    "errors",
    "duration_s",
    "v201_share",
    "database",
    "clients",
    "messages",
    "timestamp",
    "python",
    "cpu_count",
)

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}

BASELINES = ("echo", "ocpp-lib")
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
STATIONS_PER_GENERATOR = 5000  # generator processes when --clients is not given
COMPARE_SERVERS = ("echo", "ocpp-lib", "evflex-sqlite", "evflex-postgresql")


@dataclass
class OcppBenchConfig:
    stations: int = 1000
    duration: float = 60.0
    v201_share: float = 0.5
    meter_interval: float = 10.0
    heartbeat_interval: float = 60.0
    connect_rate: float = 500.0
    database_url: str | None = None
    out: Path | None = None
    server_url: str | None = None
    api_url: str | None = None
    api_token: str | None = None
    clients: int | None = None  # generator processes (default: one per 5,000 stations)
    window_minutes: float = 60.0
    call_timeout: float = 30.0
    seed: int | None = None
    mix: str = "default"
    mode: str | None = None  # paced for the default mix, closed for light16
    rate_per_station: float = 0.1
    warmup: float | None = None
    compare: bool = False
    servers: tuple[str, ...] = COMPARE_SERVERS  # what --compare runs, in this order
    postgres_url: str | None = None  # evflex-postgresql's server (default DEFAULT_POSTGRES_URL)

    def load_mode(self) -> str:
        if self.mode is not None:
            return self.mode
        return "paced" if self.mix == "default" else "closed"

    def warmup_s(self) -> float:
        """Load before the window opens: none when paced, else up to 5 s."""
        if self.warmup is not None:
            return self.warmup
        return 0.0 if self.load_mode() == "paced" else min(5.0, self.duration / 3)

    def generator_processes(self) -> int:
        if self.clients is not None:
            return self.clients
        return min(self.stations, math.ceil(self.stations / STATIONS_PER_GENERATOR))

    def validate(self) -> None:
        if self.stations < 1:
            raise ValueError("stations must be at least 1")
        if self.mix not in MIXES:
            raise ValueError(f"mix must be one of {', '.join(MIXES)}")
        if self.load_mode() not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if self.mix != "default" and self.load_mode() == "paced":
            raise ValueError("paced mode runs the default mix only (use closed or open)")
        if self.mix == "light16" and self.v201_share:
            raise ValueError("the light16 mix is all OCPP 1.6 (v201-share 0)")
        if not self.rate_per_station > 0:
            raise ValueError("rate-per-station must be positive")
        if self.warmup is not None and self.warmup < 0:
            raise ValueError("warmup must not be negative")
        if self.compare and self.server_url is not None:
            raise ValueError("--compare starts its own servers (no --server-url)")
        unknown = set(self.servers) - set(COMPARE_SERVERS)
        if unknown or not self.servers:
            raise ValueError(f"servers: choose from {', '.join(COMPARE_SERVERS)}")
        if not self.duration > 0:
            raise ValueError("duration must be positive")
        if not 0.0 <= self.v201_share <= 1.0:
            raise ValueError("v201-share must be between 0 and 1")
        if not (self.meter_interval > 0 and self.heartbeat_interval > 0):
            raise ValueError("meter and heartbeat intervals must be positive")
        if not self.connect_rate > 0:
            raise ValueError("connect-rate must be positive")
        if not 1 <= self.generator_processes() <= self.stations:
            raise ValueError("clients must be between 1 and the number of stations")
        if not (self.window_minutes > 0 and self.call_timeout > 0):
            raise ValueError("window-minutes and call-timeout must be positive")
        for url in (self.server_url, self.api_url):
            if url is not None and urlsplit(url).hostname not in _LOOPBACK:
                raise ValueError(f"{url}: the benchmark only targets loopback (127.0.0.1)")


def default_out(stations: int, when: datetime) -> Path:
    return stamped_path(f"ocpp-{stations}", when)


def ocpp_base_url(url: str) -> str:
    """``ws://host:port[/ocpp]`` -> the prefix station ids are appended to."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"{url}: expected a ws:// URL")
    path = parts.path.rstrip("/") or "/ocpp"
    return f"{parts.scheme}://{parts.netloc}{path}"


def database_kind(url: str | None) -> str:
    if not url:
        return "unknown"
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    return {"postgres": "postgresql"}.get(scheme, scheme)


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------- generator processes


class _Generators:
    """The load-generator processes and the pipes to them."""

    def __init__(self, groups, settings: LoadSettings) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.inbox: list[dict[str, Any]] = [{} for _ in groups]
        # Children start with SIGINT ignored (inherited across exec): a Ctrl-C in the
        # terminal goes to the whole process group, but only we decide when they stop.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            for i, specs in enumerate(groups):
                parent, child = ctx.Pipe()
                p = ctx.Process(
                    target=worker_main,
                    args=(specs, settings, child, i),
                    name=f"evflex-bench-gen-{i}",
                    daemon=True,
                )
                p.start()
                child.close()
                self.procs.append(p)
                self.conns.append(parent)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)

    def send(self, command: str) -> None:
        for conn in self.conns:
            conn.send(command)

    def _pump(self, timeout: float) -> None:
        """Receive whatever arrives within ``timeout``; raise if a process failed."""
        open_conns = [c for c in self.conns if not c.closed]
        if not open_conns:
            time.sleep(timeout)
            return
        for conn in wait_connections(open_conns, timeout):
            i = self.conns.index(conn)
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                conn.close()
                if "result" in self.inbox[i]:
                    continue
                self.procs[i].join(1)
                raise RuntimeError(
                    f"load generator {i} died (exit code {self.procs[i].exitcode})"
                ) from None
            if kind == "error":
                raise RuntimeError(f"load generator {i} failed:\n{payload}")
            self.inbox[i][kind] = payload

    def wait_all(self, kind: str, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not all(kind in box for box in self.inbox):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [i for i, box in enumerate(self.inbox) if kind not in box]
                raise TimeoutError(f"load generators {missing} sent no '{kind}' in {timeout:.0f} s")
            self._pump(min(remaining, 1.0))
        return [box[kind] for box in self.inbox]

    def watch(self, seconds: float) -> None:
        """Sleep ``seconds``, but fail early if a generator dies."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self._pump(min(remaining, 0.5))

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.procs:
            with contextlib.suppress(psutil.Error, ValueError, TypeError):
                t = psutil.Process(p.pid).cpu_times()
                total += t.user + t.system
        return total

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send("stop")
        deadline = time.monotonic() + 20
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(3)
            if p.is_alive():
                p.kill()
                p.join(3)
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.close()


# ---------------------------------------------------------------- helpers


def _health(client: httpx.Client | None, api_url: str | None) -> dict | None:
    if client is None or api_url is None:
        return None
    try:
        r = client.get(f"{api_url}/health")
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _register_tokens(client: httpx.Client, api_url: str) -> int:
    """Make the benchmark's RFID cards known (Accepted); returns how many worked."""
    ok = 0
    for n in range(ID_TOKEN_COUNT):
        token = id_token(n)
        with contextlib.suppress(httpx.HTTPError):
            r = client.put(
                f"{api_url}/id-tokens/{token}", json={"id_token": token, "status": "Accepted"}
            )
            ok += r.status_code in (200, 201)
    return ok


_LOG_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) (.*)$")


def log_summary(text: str) -> dict[str, Any]:
    """A server log's warnings, errors and tracebacks counted, and a few distinct lines."""
    levels: Counter[str] = Counter()
    samples: list[str] = []
    seen: set[str] = set()
    tracebacks = 0
    for line in text.splitlines():
        if line.startswith("Traceback"):
            tracebacks += 1
        m = _LOG_LINE.match(line)
        if not m:
            continue
        levels[m.group(1)] += 1
        # Group repeats: station ids and numbers vary, the message does not.
        key = re.sub(r"bench-\w+-\d+|\d+", "#", m.group(2))[:120]
        if key not in seen and len(samples) < 8:
            seen.add(key)
            samples.append(f"{m.group(1)} {m.group(2)}"[:300])
    return {
        "warnings": levels["WARNING"],
        "errors": levels["ERROR"] + levels["CRITICAL"],
        "tracebacks": tracebacks,
        "samples": samples,
    }


def _sqlite_size_mb(url: str | None) -> float | None:
    if not url or not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[-1]
    if not path or path == ":memory:":
        return None
    size = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            size += os.path.getsize(path + suffix)
    return round(size / 1e6, 2)


def _busy_percent(before, after) -> float | None:
    """Share of all cores' time that was not idle between two psutil.cpu_times()."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (
        before.idle + getattr(before, "iowait", 0.0)
    )
    return _r(100.0 * (1.0 - idle / total), 1) if total > 0 else None


def _merge(results: list[dict]) -> dict[str, Any]:
    merged: dict[str, Any] = {
        "latency_ms": {},
        "connect_ms": [],
        "connect_failure_ms": [],
        "error_samples": [],
    }
    counters = ("callerrors", "timeouts", "connect_failures", "server_calls", "auth_status")
    for key in counters:
        merged[key] = Counter()
    for res in results:
        for action, samples in res["latency_ms"].items():
            merged["latency_ms"].setdefault(action, []).extend(samples)
        for key, value in res.items():
            if key in counters:
                merged[key].update(value)
            elif key in ("error_samples", "connect_ms", "connect_failure_ms"):
                merged[key].extend(value)
            elif isinstance(value, int | float):
                merged[key] = merged.get(key, 0) + value
    return merged


# ---------------------------------------------------------------- the benchmark


@dataclass
class _Target:
    """One server a run measures: evflex on a database, a baseline, or a running server."""

    label: str  # evflex-sqlite, evflex-postgresql, echo, ocpp-lib, external
    kind: str  # evflex, echo, ocpp-lib, external
    database_url: str | None = None


def _single_target(config: OcppBenchConfig) -> _Target:
    if config.server_url is not None:
        return _Target("external", "external", config.database_url)
    url = config.database_url
    return _Target(f"evflex-{database_kind(url) if url else 'sqlite'}", "evflex", url)


@contextlib.contextmanager
def _on_sigterm_interrupt():
    """SIGTERM stops a run like Ctrl-C does (servers and generators are cleaned up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_ocpp_bench(
    config: OcppBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the benchmark against one server, write the JSON file and return the result dict."""
    if config.compare:
        return run_ocpp_compare(config, progress)
    say = progress or (lambda _msg: None)
    config.validate()
    raise_nofile_limit()
    started = datetime.now(UTC)
    out = Path(config.out) if config.out is not None else default_out(config.stations, started)
    seed = config.seed if config.seed is not None else secrets.randbits(31)
    run_tag = secrets.token_hex(3)
    with _on_sigterm_interrupt():
        try:
            result = _run_target(
                config, _single_target(config), say, started, seed, run_tag, out.with_suffix("")
            )
        except (RuntimeError, TimeoutError, OSError) as exc:
            # A run that broke down is a result too: record it, then report the error.
            write_json(out, _failure_result(config, started, seed, run_tag, exc))
            raise
    write_json(out, result)
    result["out"] = str(out)
    return result


def _run_target(
    config: OcppBenchConfig,
    target: _Target,
    say: Callable[[str], None],
    started: datetime,
    seed: int,
    run_tag: str,
    keep_log_as: Path | None = None,
) -> dict[str, Any]:
    """Start the target's server (unless it runs already), load it, measure, stop it.

    A run with failures keeps the server's log as ``<keep_log_as>.server.log``.
    """
    minute = config.duration / config.window_minutes
    clients = config.generator_processes()
    groups = split_stations(run_tag, config.stations, config.v201_share, clients)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="evflex-bench-")))
        client = stack.enter_context(httpx.Client(timeout=10.0, trust_env=False))
        server: ChildServer | None = None
        db_url = target.database_url
        if target.kind == "evflex":
            if db_url is None:
                db_url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
            server = ServerProcess(
                db_url,
                tmp / "server.log",
                heartbeat_interval=max(1, round(config.heartbeat_interval)),
            )
            say(f"starting evflex serve ({database_kind(db_url)})")
        elif target.kind in BASELINES:
            server = BaselineProcess(target.kind, tmp / "server.log")
            say(f"starting the {target.kind} baseline server")
        if server is not None:
            stack.callback(server.stop)
        settings = LoadSettings(
            server_url=server.ocpp_url if server else ocpp_base_url(config.server_url or ""),
            duration=config.duration,
            meter_interval=config.meter_interval,
            heartbeat_interval=config.heartbeat_interval,
            connect_rate=config.connect_rate / clients,
            session_min_s=5 * minute,
            session_max_s=20 * minute,
            gap_max_s=1 * minute,
            call_timeout=config.call_timeout,
            open_timeout=config.call_timeout,
            seed=seed,
            mix=config.mix,
            mode=config.load_mode(),
            rate_per_station=config.rate_per_station,
            warmup=config.warmup_s(),
        )
        # The generators load their modules while the server starts.
        say(f"starting {clients} load generator process(es)")
        gens = _Generators(groups, settings)
        stack.callback(gens.stop)
        if server is not None:
            server.start()
            api_url, api_token = server.api_url, server.api_token
        else:
            api_url, api_token = config.api_url, config.api_token
        if api_token:
            client.headers["Authorization"] = f"Bearer {api_token}"
        # Only the default mix presents RFID cards.
        tokens = _register_tokens(client, api_url) if api_url and config.mix == "default" else 0
        gens.wait_all("loaded", 120)

        rss_idle = server.rss_now() if server else None
        say(f"connecting {config.stations} stations at {config.connect_rate:g}/s")
        per_process = max(len(g) for g in groups)
        connect_bound = per_process / settings.connect_rate + 5 * config.call_timeout + 30
        t0 = time.monotonic()
        gens.send("connect")
        ready = gens.wait_all("ready", connect_bound)
        connect_time = time.monotonic() - t0
        connected = sum(r["connected"] for r in ready)
        # The stations are connected and idle until "start": what do they cost at rest?
        gens.watch(min(2.0, 0.5 + config.stations / 2000))
        rss_connected = server.rss_now() if server else None

        say(f"{connected}/{config.stations} connected; measuring {config.duration:g} s")
        gens.send("start")
        gens.watch(settings.warmup)
        health_start = _health(client, api_url)
        cpu0 = server.cpu_seconds() if server else None
        gen_cpu0 = gens.cpu_seconds()
        host0 = psutil.cpu_times()
        w0 = time.monotonic()
        gens.watch(config.duration)
        window = time.monotonic() - w0
        cpu1 = server.cpu_seconds() if server else None
        gen_cpu1 = gens.cpu_seconds()
        host1 = psutil.cpu_times()
        health_end = _health(client, api_url)
        rss_end = server.last_rss if server else None

        say("window over; collecting results")
        results = gens.wait_all("result", config.call_timeout + 60)
        gens.stop()
        server_alive = server.alive() if server else None
        exit_code = server.stop() if server else None
        log = log_summary(server.log_path.read_text(errors="replace")) if server else None
        db_size = _sqlite_size_mb(db_url)

        result = _build_result(
            config=config,
            target=target,
            started=started,
            seed=seed,
            run_tag=run_tag,
            settings=settings,
            connect_time=connect_time,
            connected=connected,
            merged=_merge(results),
            window=window,
            cpu=(cpu0, cpu1),
            gen_cpu=gen_cpu1 - gen_cpu0,
            host_busy=_busy_percent(host0, host1),
            server=server,
            rss=(rss_idle, rss_connected, rss_end),
            health=(health_start, health_end),
            db_url=db_url,
            db_size=db_size,
            tokens=tokens,
            server_alive=server_alive,
            exit_code=exit_code,
            log=log,
        )
        if server is not None and keep_log_as is not None and not result["ok"]:
            kept = keep_log_as.with_name(keep_log_as.name + ".server.log")
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(server.log_path, kept)
            result["server_log_file"] = str(kept)
        return result


# ---------------------------------------------------------------- --compare


class PostgresUnavailable(Exception):
    """No PostgreSQL server answered, or it refused a new database."""


def _asyncpg_url(url: str) -> str:
    return urlsplit(url)._replace(scheme="postgresql").geturl()


def _postgres_execute(url: str, sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(_asyncpg_url(url), timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(run())
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise PostgresUnavailable(f"{type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def fresh_postgres_database(url: str):
    """A new, empty database on ``url``'s server, for one run; dropped afterwards."""
    name = f"evflex_bench_{secrets.token_hex(6)}"
    _postgres_execute(url, f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(url)._replace(path=f"/{name}").geturl()
    finally:
        with contextlib.suppress(PostgresUnavailable):
            _postgres_execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _ratio(value: float | None, reference: float | None) -> float | None:
    if not value or not reference:
        return None
    return round(value / reference, 3)


def run_ocpp_compare(
    config: OcppBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The same load against each of ``config.servers`` in turn; one JSON file for all."""
    say = progress or (lambda _msg: None)
    config.validate()
    raise_nofile_limit()
    started = datetime.now(UTC)
    out = Path(config.out or stamped_path(f"ocpp-compare-{config.stations}", started))
    seed = config.seed if config.seed is not None else secrets.randbits(31)
    run_tag = secrets.token_hex(3)
    pg_url = config.postgres_url or DEFAULT_POSTGRES_URL
    rows: list[dict[str, Any]] = []

    def measure(target: _Target) -> dict[str, Any]:
        say(f"[{target.label}]")
        try:
            keep = out.with_name(f"{out.stem}-{target.label}")
            return _run_target(config, target, say, started, seed, run_tag, keep)
        except (RuntimeError, TimeoutError, OSError) as exc:
            say(f"{target.label} failed: {exc}")
            return {**_failure_result(config, started, seed, run_tag, exc), "server": target.label}

    with _on_sigterm_interrupt():
        for label in config.servers:
            if label in BASELINES:
                rows.append(measure(_Target(label, label)))
            elif label == "evflex-sqlite":
                rows.append(measure(_Target(label, "evflex")))
            else:
                try:
                    with fresh_postgres_database(pg_url) as url:
                        rows.append(measure(_Target(label, "evflex", url)))
                except PostgresUnavailable as exc:
                    where = urlsplit(pg_url)
                    shown = f"{where.hostname}:{where.port or 5432}"
                    reason = f"skipped: no PostgreSQL answers at {shown} ({exc})"
                    say(f"{label} {reason}")
                    rows.append({"server": label, "skipped": reason, "ok": None})

    result = _compare_result(config, started, seed, run_tag, rows)
    write_json(out, result)
    result["out"] = str(out)
    return result


def _compare_result(
    config: OcppBenchConfig, started: datetime, seed: int, run_tag: str, rows: list[dict]
) -> dict[str, Any]:
    rate = {row["server"]: row.get("msgs_per_s") for row in rows}
    for row in rows:
        if "skipped" not in row:
            row["ratio_vs_bare_lib"] = _ratio(row.get("msgs_per_s"), rate.get("ocpp-lib"))
            row["ratio_vs_echo"] = _ratio(row.get("msgs_per_s"), rate.get("echo"))
    measured = [row for row in rows if "skipped" not in row]
    cpus = os.cpu_count() or 1
    return {
        "benchmark": "ocpp-compare",
        "timestamp": started.isoformat(timespec="seconds"),
        "ok": all(row.get("ok") for row in measured),
        "stations": config.stations,
        "duration_s": config.duration,
        "mix": config.mix,
        "mode": config.load_mode(),
        "rate_per_station": config.rate_per_station if config.load_mode() == "open" else None,
        "v201_share": config.v201_share,
        "clients": config.generator_processes(),
        "servers": [row["server"] for row in rows],
        "ratios": {
            row["server"]: {
                "ratio_vs_bare_lib": row.get("ratio_vs_bare_lib"),
                "ratio_vs_echo": row.get("ratio_vs_echo"),
            }
            for row in measured
            if row["server"].startswith("evflex")
        },
        "rows": rows,
        "settings": {
            "connect_rate_per_s": config.connect_rate,
            "call_timeout_s": config.call_timeout,
            "warmup_s": config.warmup_s(),
            "seed": seed,
            "run_tag": run_tag,
        },
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": cpus,
        "evflex": __version__,
        "note": (
            "the same load generator and settings against each server in turn; each server "
            f"is a child process measured by psutil; generator and server share {cpus} core(s)"
        ),
    }


def _failure_result(
    config: OcppBenchConfig, started: datetime, seed: int, run_tag: str, exc: BaseException
) -> dict[str, Any]:
    return {
        "benchmark": "ocpp",
        "timestamp": started.isoformat(timespec="seconds"),
        "ok": False,
        "failure": f"{type(exc).__name__}: {exc}"[-4000:],
        "stations": config.stations,
        "connected": None,
        "duration_s": config.duration,
        "v201_share": config.v201_share,
        "database": database_kind(config.database_url or "sqlite"),
        "clients": config.generator_processes(),
        "mix": config.mix,
        "mode": config.load_mode(),
        "settings": {"seed": seed, "run_tag": run_tag, "connect_rate_per_s": config.connect_rate},
        "python": platform.python_version(),
        "cpu_count": os.cpu_count() or 1,
    }


def _build_result(
    *,
    config: OcppBenchConfig,
    target: _Target,
    started: datetime,
    seed: int,
    run_tag: str,
    settings: LoadSettings,
    connect_time: float,
    connected: int,
    merged: dict[str, Any],
    window: float,
    cpu: tuple[float | None, float | None],
    gen_cpu: float,
    host_busy: float | None,
    server: ChildServer | None,
    rss: tuple[int | None, int | None, int | None],
    health: tuple[dict | None, dict | None],
    db_url: str | None,
    db_size: float | None,
    tokens: int,
    server_alive: bool | None,
    exit_code: int | None,
    log: dict | None,
) -> dict[str, Any]:
    lat_by_action: dict[str, list[float]] = merged["latency_ms"]
    all_lat = sorted(v for samples in lat_by_action.values() for v in samples)
    connect_ms = sorted(merged["connect_ms"])
    failed_ms = sorted(merged["connect_failure_ms"])
    callerrors = sum(merged["callerrors"].values())
    timeouts = sum(merged["timeouts"].values())
    connect_failures = sum(merged["connect_failures"].values())
    disconnects = merged.get("disconnects", 0)
    bad_frames = merged.get("bad_frames", 0)
    errors = callerrors + timeouts + connect_failures + disconnects + bad_frames
    handshakes_failed = sum(
        n for key, n in merged["connect_failures"].items() if key.startswith("handshake")
    )
    rss_idle, rss_connected, rss_end = rss
    per_station_kb = None
    if rss_idle and rss_connected and connected:
        per_station_kb = (rss_connected - rss_idle) / connected / 1024.0
    errors_in_window = (
        merged.get("callerrors_in_window", 0)
        + merged.get("timeouts_in_window", 0)
        + merged.get("disconnects_in_window", 0)
    )
    messages = merged.get("answered_in_window", 0)
    cpu_s = None if None in cpu else cpu[1] - cpu[0]
    h0, h1 = health
    writer: dict[str, Any] | None = None
    if h0 and h1 and "writer_jobs" in h0 and "writer_jobs" in h1:
        jobs = h1["writer_jobs"] - h0["writer_jobs"]
        batches = h1["writer_batches"] - h0["writer_batches"]
        writer = {
            "jobs": jobs,
            "batches": batches,
            "jobs_per_s": _r(jobs / window),
            "commits_per_s": _r(batches / window),
            "mean_batch": _r(jobs / batches) if batches else None,
        }
    cpus = os.cpu_count() or 1
    per_action = {}
    for action in sorted(lat_by_action):
        samples = sorted(lat_by_action[action])
        per_action[action] = {
            "count": len(samples),
            "p50_ms": _r(percentile(samples, 50)),
            "p99_ms": _r(percentile(samples, 99)),
            "max_ms": _r(samples[-1] if samples else None),
        }
    if target.kind in BASELINES:
        db_label = "none"
    else:
        db_label = database_kind(db_url) if db_url else "unknown (external server)"
    shown_url = db_url if (config.database_url or config.server_url) else None
    return {
        "benchmark": "ocpp",
        "server": target.label,
        "timestamp": started.isoformat(timespec="seconds"),
        "ok": connected == config.stations and errors == 0,
        "stations": config.stations,
        "connected": connected,
        "handshakes_failed": handshakes_failed,
        "mix": config.mix,
        "mode": settings.mode,
        "rate_per_station": settings.rate_per_station if settings.mode == "open" else None,
        "connected_at_end": (h1 or {}).get("stations_connected"),
        "connect_time_s": _r(connect_time, 3),
        "connect_p50_ms": _r(percentile(connect_ms, 50)),
        "connect_p99_ms": _r(percentile(connect_ms, 99)),
        "connect_max_ms": _r(connect_ms[-1] if connect_ms else None),
        "duration_s": config.duration,
        "window_measured_s": _r(window, 3),
        "messages": messages,
        "msgs_per_s": _r(messages / config.duration),
        "sent_in_window": merged.get("sent_in_window", 0),
        "latency_p50_ms": _r(percentile(all_lat, 50)),
        "latency_p99_ms": _r(percentile(all_lat, 99)),
        "latency_max_ms": _r(all_lat[-1] if all_lat else None),
        "latency_mean_ms": _r(sum(all_lat) / len(all_lat) if all_lat else None),
        "latency_samples": len(all_lat),
        "per_action": per_action,
        "errors": errors,
        "errors_in_window": errors_in_window,
        "error_detail": {
            "callerrors": dict(merged["callerrors"]),
            "timeouts": dict(merged["timeouts"]),
            "disconnects": disconnects,
            "connect_failures": dict(merged["connect_failures"]),
            "handshake_failure_p50_ms": _r(percentile(failed_ms, 50)),
            "handshake_failure_max_ms": _r(failed_ms[-1] if failed_ms else None),
            "bad_frames": bad_frames,
            "late_answers": merged.get("late_answers", 0),
            "samples": merged.get("error_samples", [])[:20],
        },
        "server_cpu_s": _r(cpu_s, 3),
        "server_cpu_percent": _r(100.0 * cpu_s / window, 1) if cpu_s is not None else None,
        "server_peak_rss_mb": _r(server.peak_rss / 1e6, 1) if server else None,
        "server_rss_end_mb": _r(rss_end / 1e6, 1) if rss_end else None,
        "server_rss_idle_mb": _r(rss_idle / 1e6, 1) if rss_idle else None,
        "server_rss_connected_mb": _r(rss_connected / 1e6, 1) if rss_connected else None,
        "rss_per_station_kb": _r(per_station_kb, 1),
        "server_alive_after_window": server_alive,
        "server_exit_code": exit_code,
        "server_log": log,
        "server_writer": writer,
        "loadgen_cpu_percent": _r(100.0 * gen_cpu / window, 1),
        "host_cpu_busy_percent": host_busy,
        "sessions_started": merged.get("sessions_started", 0),
        "sessions_ended": merged.get("sessions_ended", 0),
        "auth_status": dict(merged["auth_status"]),
        "server_calls": dict(merged["server_calls"]),
        "id_tokens_registered": tokens,
        "v201_share": config.v201_share,
        "v201_stations": sum(_v201_flags(config)),
        "database": db_label,
        "database_url": shown_url,
        "database_size_mb": db_size,
        "clients": config.generator_processes(),
        "settings": {
            "meter_interval_s": config.meter_interval,
            "heartbeat_interval_s": config.heartbeat_interval,
            "connect_rate_per_s": config.connect_rate,
            "window_minutes": config.window_minutes,
            "session_s": [_r(settings.session_min_s), _r(settings.session_max_s)],
            "call_timeout_s": config.call_timeout,
            "warmup_s": settings.warmup,
            "seed": seed,
            "run_tag": run_tag,
            "server": "spawned" if server else config.server_url,
        },
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": cpus,
        "evflex": __version__,
        "note": (
            f"load generator ({config.generator_processes()} process(es)) and server share the same "
            f"{cpus} CPU core(s) over loopback"
            if server
            else "server runs outside the benchmark: no CPU/RSS figures"
        ),
    }


def _v201_flags(config: OcppBenchConfig) -> list[bool]:
    share = config.v201_share
    return [math.floor((i + 1) * share) > math.floor(i * share) for i in range(config.stations)]


# ---------------------------------------------------------------- output


def render_table(result: dict[str, Any]):
    from rich.table import Table

    def num(value, fmt="{:,.1f}", unit=""):
        return "n/a" if value is None else fmt.format(value) + unit

    ok = result["ok"]
    table = Table(
        title=f"evflex bench ocpp: {result['stations']} stations "
        f"({'ok' if ok else '[red]with failures[/]'})",
        show_header=False,
    )
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    conn = f"{result['connected']:,} / {result['stations']:,}"
    if result["connected"] < result["stations"]:
        conn = f"[red]{conn}[/]"
    mix = f"{result['v201_stations']:,} × 2.0.1, {result['stations'] - result['v201_stations']:,} × 1.6"
    rows = [
        ("server", result.get("server", "evflex")),
        ("stations connected", conn),
        ("handshakes failed", f"{result.get('handshakes_failed', 0):,}"),
        ("protocol mix", mix),
        ("message mix / load mode", _load_label(result)),
        ("database", result["database"]),
        ("generator processes", str(result["clients"])),
        ("connect time (all)", num(result["connect_time_s"], "{:,.2f}", " s")),
        (
            "connect+boot p50 / p99",
            f"{num(result['connect_p50_ms'])} / {num(result['connect_p99_ms'])} ms",
        ),
        ("window", num(result["duration_s"], "{:,.0f}", " s")),
        ("responses in window", f"{result['messages']:,}"),
        ("messages/s", num(result["msgs_per_s"])),
        (
            "latency p50 / p99 / max",
            f"{num(result['latency_p50_ms'])} / {num(result['latency_p99_ms'])} / "
            f"{num(result['latency_max_ms'])} ms",
        ),
        ("errors (run / window)", f"{result['errors']:,} / {result['errors_in_window']:,}"),
        ("server CPU", num(result["server_cpu_percent"], "{:,.0f}", " % of one core")),
        ("server peak RSS", num(result["server_peak_rss_mb"], "{:,.0f}", " MB")),
        ("RSS per connected idle station", num(result.get("rss_per_station_kb"), unit=" KiB")),
        ("load generator CPU", num(result["loadgen_cpu_percent"], "{:,.0f}", " % of one core")),
        (
            f"host CPU busy ({result['cpu_count']} cores)",
            num(result["host_cpu_busy_percent"], "{:,.0f}", " %"),
        ),
    ]
    writer = result.get("server_writer")
    if writer:
        rows.append(
            (
                "store commits/s (jobs per commit)",
                f"{num(writer['commits_per_s'])} ({num(writer['mean_batch'])})",
            )
        )
    for name, value in rows:
        style = "red" if name.startswith("errors") and result["errors"] else None
        table.add_row(name, value, style=style)
    return table


def _load_label(result: dict[str, Any]) -> str:
    mode = result.get("mode") or "paced"
    if mode == "open" and result.get("rate_per_station"):
        mode = f"open, {result['rate_per_station']:g} msg/s per station"
    return f"{result.get('mix', 'default')} / {mode}"


def render_compare(result: dict[str, Any]):
    from rich.table import Table

    def num(value, fmt="{:,.1f}"):
        return "n/a" if value is None else fmt.format(value)

    table = Table(
        title=f"evflex bench ocpp --compare: {result['stations']:,} stations, "
        f"{_load_label(result)}, {result['duration_s']:g} s window",
        caption="CPU % of one core; RSS = peak; hs fail = handshakes failed; "
        "×lib, ×echo = msg/s against the bare ocpp library's and the echo server's; "
        f"host busy = all {result['cpu_count']} cores over the window, other processes included",
    )
    table.add_column("server", no_wrap=True)
    for name in ("msg/s", "p50 ms", "p99 ms", "CPU %", "RSS MB", "errors", "hs fail", "×lib"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("×echo", justify="right", no_wrap=True)
    table.add_column("host busy %", justify="right", no_wrap=True)
    for row in result["rows"]:
        if "skipped" in row:
            table.add_row(row["server"], f"[yellow]{row['skipped']}[/]")
            continue
        if "failure" in row:
            table.add_row(row["server"], f"[red]failed: {row['failure'][:200]}[/]")
            continue
        table.add_row(
            row["server"],
            num(row["msgs_per_s"], "{:,.0f}"),
            num(row["latency_p50_ms"]),
            num(row["latency_p99_ms"]),
            num(row["server_cpu_percent"], "{:,.0f}"),
            num(row["server_peak_rss_mb"], "{:,.0f}"),
            f"[red]{row['errors']:,}[/]" if row["errors"] else "0",
            f"{row['handshakes_failed']:,}",
            num(row.get("ratio_vs_bare_lib"), "{:.2f}"),
            num(row.get("ratio_vs_echo"), "{:.2f}"),
            num(row.get("host_cpu_busy_percent"), "{:,.0f}"),
        )
    return table


def render_actions(result: dict[str, Any]):
    from rich.table import Table

    table = Table("action (in window)", "count", "p50 ms", "p99 ms", "max ms")
    for action, row in result["per_action"].items():
        table.add_row(
            action,
            f"{row['count']:,}",
            *(
                f"{row[k]:,.1f}" if row[k] is not None else "n/a"
                for k in ("p50_ms", "p99_ms", "max_ms")
            ),
        )
    return table


def bench_ocpp_command(
    stations: Annotated[int, typer.Option("--stations", help="Simulated stations (K)")] = 1000,
    duration: Annotated[
        float, typer.Option(help="Measurement window (s) after all stations connected")
    ] = 60.0,
    v201_share: Annotated[
        float | None,
        typer.Option(help="Share of stations speaking OCPP 2.0.1 (default: 0.5; 0 for light16)"),
    ] = None,
    meter_interval: Annotated[float, typer.Option(help="Meter value interval (s)")] = 10.0,
    heartbeat_interval: Annotated[float, typer.Option(help="Heartbeat interval (s)")] = 60.0,
    connect_rate: Annotated[float, typer.Option(help="New connections per second")] = 500.0,
    database_url: Annotated[
        str | None,
        typer.Option(help="Store of the spawned server (default: a fresh SQLite file)"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="JSON result file (default bench-results/ocpp-<K>-<time>.json)"),
    ] = None,
    server_url: Annotated[
        str | None,
        typer.Option(help="Benchmark a running server, ws://127.0.0.1:PORT/ocpp (no CPU/RSS)"),
    ] = None,
    api_url: Annotated[
        str | None,
        typer.Option(help="REST API of that running server, http://127.0.0.1:PORT/api/v1"),
    ] = None,
    api_token: Annotated[
        str | None,
        typer.Option(envvar="EVFLEX_API_TOKEN", help="Token for that API (evflex token create)"),
    ] = None,
    clients: Annotated[
        int | None,
        typer.Option(help="Load-generator processes (default: one per 5,000 stations)"),
    ] = None,
    window_minutes: Annotated[
        float, typer.Option(help="Minutes of station life the window stands for")
    ] = 60.0,
    call_timeout: Annotated[float, typer.Option(help="Wait for an answer (s)")] = 30.0,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: random)")] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Run the same load against a raw websockets echo server, a bare server on "
            "the ocpp library, evflex on SQLite and evflex on PostgreSQL, in turn",
        ),
    ] = False,
    mix: Annotated[
        str | None,
        typer.Option(
            help="Messages: 'default' (boot, status, heartbeats, charging sessions, 1.6 and "
            "2.0.1) or 'light16' (heartbeat, status, two-reading meter values; all 1.6) "
            "(default: default; light16 with --compare)"
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help="'paced' (station timers, default mix), 'closed' (one request in flight per "
            "station, back to back) or 'open' (fixed schedule, --rate-per-station) "
            "(default: paced; closed for light16)"
        ),
    ] = None,
    rate_per_station: Annotated[
        float, typer.Option(help="Open mode: messages per second per station")
    ] = 0.1,
    warmup: Annotated[
        float | None,
        typer.Option(help="Load before the window opens (s) (default: 0 paced, else ≤ 5)"),
    ] = None,
    servers: Annotated[
        str,
        typer.Option(help="With --compare: which servers, comma-separated, in this order"),
    ] = ",".join(COMPARE_SERVERS),
    postgres_url: Annotated[
        str,
        typer.Option(
            envvar="EVFLEX_TEST_POSTGRES_URL",
            help="With --compare: the PostgreSQL server for evflex-postgresql (a fresh "
            "database is created on it per run and dropped after)",
        ),
    ] = DEFAULT_POSTGRES_URL,
) -> None:
    """OCPP load: K simulated 1.6/2.0.1 stations against one CSMS process."""
    console = wide_console(132)  # room for the comparison's columns
    mix = mix or ("light16" if compare else "default")
    config = OcppBenchConfig(
        stations=stations,
        duration=duration,
        v201_share=v201_share if v201_share is not None else (0.0 if mix == "light16" else 0.5),
        meter_interval=meter_interval,
        heartbeat_interval=heartbeat_interval,
        connect_rate=connect_rate,
        database_url=database_url,
        out=out,
        server_url=server_url,
        api_url=api_url,
        api_token=api_token,
        clients=clients,
        window_minutes=window_minutes,
        call_timeout=call_timeout,
        seed=seed,
        mix=mix,
        mode=mode,
        rate_per_station=rate_per_station,
        warmup=warmup,
        compare=compare,
        servers=tuple(name.strip() for name in servers.split(",") if name.strip()),
        postgres_url=postgres_url,
    )
    validated(config, console)
    try:
        result = run_ocpp_bench(config, progress=lambda msg: console.print(f"[dim]… {msg}[/]"))
    except KeyboardInterrupt:
        console.print("[red]interrupted; server and generators stopped[/]")
        raise typer.Exit(130) from None
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]benchmark failed: {exc}[/]")
        raise typer.Exit(1) from None
    if compare:
        console.print(render_compare(result))
        console.print(f"results: {result['out']}")
        return
    console.print(render_table(result))
    if result["per_action"]:
        console.print(render_actions(result))
    if not result["ok"]:
        detail = {k: v for k, v in result["error_detail"].items() if v and k != "samples"}
        console.print(f"[red]errors: {json.dumps(detail)}[/]", soft_wrap=True)
        for line in result["error_detail"]["samples"][:3]:
            console.print(f"  e.g. {line}", style="red", soft_wrap=True, markup=False)
        if result.get("server_log_file"):
            console.print(f"server log: {result['server_log_file']}")
    console.print(f"results: {result['out']}")


if __name__ == "__main__":  # pragma: no cover
    typer.run(bench_ocpp_command)
