"""The load generator: thousands of light simulated stations in one process.

Each station is one coroutine on a raw WebSocket connection (plus a reader
task) speaking OCPP-J directly: it sends a CALL, waits for the matching
CALLRESULT or CALLERROR, and only then sends the next one, as a real station
does. A CALL from the CSMS is answered with a CALLERROR ``NotImplemented`` so
that nothing waits on us.

What a station says is its *mix*:

* ``default``: BootNotification, a StatusNotification per connector, then
  heartbeats and back-to-back charging sessions with periodic meter values
  (1.6 or 2.0.1);
* ``light16``: BootNotification, then heartbeat, StatusNotification and a
  MeterValues with two readings (energy register, power), over and over.

When it says it is its *mode*:

* ``paced``: on the station's own timers (heartbeat and meter intervals);
  only with the default mix;
* ``closed``: exactly one request in flight, the next sent as soon as the
  answer arrives;
* ``open``: one message every ``1 / rate_per_station`` seconds on a fixed
  schedule; latency counts from the scheduled send time, so a server that
  falls behind cannot hide it (no coordinated omission).

Stations connect and boot, then stay idle until the measurement starts.

A generator process is driven by the orchestrator through a pipe:

* worker -> parent ``("loaded", None)`` once it is up;
* parent -> worker ``"connect"``: open the stations at the given rate;
* worker -> parent ``("ready", summary)`` once every station has booted or failed;
* parent -> worker ``"start"``: the measurement window begins now;
* worker -> parent ``("result", stats)`` after the window and a clean shutdown;
* parent -> worker ``"stop"`` (or the pipe closing): give up at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import signal
import time
import traceback
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from evflex.bench.baselines import raise_nofile_limit
from evflex.bench.frames import ID_TOKEN_COUNT, V16, V201, StationModel
from evflex.tuning import tune_gc

MIXES = ("default", "light16")
MODES = ("paced", "closed", "open")
SESSION_STEPS_MAX = 18  # calls of one default-mix cycle at most (closed and open modes)

_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True, slots=True)
class StationSpec:
    station_id: str
    version: str


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """What every simulated station of a run shares."""

    server_url: str  # ws://host:port/ocpp (the station id is appended)
    duration: float
    meter_interval: float
    heartbeat_interval: float
    connect_rate: float  # new connections per second for this process
    session_min_s: float  # charging session length, drawn per session
    session_max_s: float
    gap_max_s: float  # pause between one session's end and the next plug-in
    call_timeout: float = 30.0
    open_timeout: float = 30.0
    seed: int = 1
    mix: str = "default"  # see MIXES
    mode: str = "paced"  # see MODES
    rate_per_station: float = 0.1  # messages per second per station in open mode
    warmup: float = 0.0  # seconds of load before the window opens


class StationGone(Exception):
    """The connection closed under a station."""


class Stats:
    """Counters and raw samples of one generator process."""

    def __init__(self) -> None:
        self.window_start = math.inf
        self.window_end = math.inf
        self.stopping = False
        self.latency_ms: dict[str, array] = {}
        self.sent = 0
        self.sent_in_window = 0
        self.answered = 0
        self.answered_in_window = 0
        self.callerrors: Counter[str] = Counter()  # "Action: Code"
        self.callerrors_in_window = 0
        self.timeouts: Counter[str] = Counter()
        self.timeouts_in_window = 0
        self.disconnects = 0
        self.disconnects_in_window = 0
        self.connect_failures: Counter[str] = Counter()
        self.connect_ms = array("d")
        self.connect_failure_ms = array("d")  # time until a failed handshake gave up
        self.connected = 0
        self.settled = 0  # connected or failed
        self.late_answers = 0
        self.bad_frames = 0
        self.server_calls: Counter[str] = Counter()
        self.auth_status: Counter[str] = Counter()
        self.sessions_started = 0
        self.sessions_ended = 0
        self.error_samples: list[str] = []

    def in_window(self, t: float) -> bool:
        return self.window_start <= t < self.window_end

    def note(self, text: str) -> None:
        if len(self.error_samples) < 20:
            self.error_samples.append(text)

    def export(self) -> dict[str, Any]:
        return {
            "latency_ms": {k: v.tolist() for k, v in self.latency_ms.items()},
            "sent": self.sent,
            "sent_in_window": self.sent_in_window,
            "answered": self.answered,
            "answered_in_window": self.answered_in_window,
            "callerrors": dict(self.callerrors),
            "callerrors_in_window": self.callerrors_in_window,
            "timeouts": dict(self.timeouts),
            "timeouts_in_window": self.timeouts_in_window,
            "disconnects": self.disconnects,
            "disconnects_in_window": self.disconnects_in_window,
            "connect_failures": dict(self.connect_failures),
            "connect_ms": self.connect_ms.tolist(),
            "connect_failure_ms": self.connect_failure_ms.tolist(),
            "connected": self.connected,
            "late_answers": self.late_answers,
            "bad_frames": self.bad_frames,
            "server_calls": dict(self.server_calls),
            "auth_status": dict(self.auth_status),
            "sessions_started": self.sessions_started,
            "sessions_ended": self.sessions_ended,
            "error_samples": list(self.error_samples),
        }


class SimStation:
    """One simulated station: connect, boot, report, charge, repeat."""

    def __init__(
        self, spec: StationSpec, settings: LoadSettings, stats: Stats, rng: random.Random
    ) -> None:
        self.model = StationModel(spec.station_id, spec.version, rng)
        self.settings = settings
        self.stats = stats
        self.rng = rng
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task | None = None
        self.in_call = False
        self.alive = False
        self._next_id = 0
        self._pending: tuple[str, asyncio.Future] | None = None
        self._scheduled: float | None = None  # open mode: when the next call was due
        self._session_ok = False

    # ------------------------------------------------------------ wire

    async def call(self, action: str, payload: dict) -> dict | None:
        """Send one CALL and wait for its answer; None on CALLERROR or timeout."""
        ws = self.ws
        stats = self.stats
        if ws is None or not self.alive or stats.stopping:
            raise StationGone
        self._next_id += 1
        mid = str(self._next_id)
        fut = asyncio.get_running_loop().create_future()
        self._pending = (mid, fut)
        self.in_call = True
        t0 = self._scheduled if self._scheduled is not None else time.perf_counter()
        self._scheduled = None
        measured = stats.in_window(t0)
        stats.sent += 1
        if measured:
            stats.sent_in_window += 1
        try:
            await ws.send(_DUMPS([2, mid, action, payload]))
            async with asyncio.timeout(self.settings.call_timeout):
                frame = await fut
        except TimeoutError:
            stats.timeouts[action] += 1
            if measured:
                stats.timeouts_in_window += 1
            stats.note(f"{self.model.station_id}: {action} timed out")
            return None
        except (ConnectionClosed, ConnectionError) as exc:
            raise StationGone from exc
        finally:
            self._pending = None
            self.in_call = False
        t1 = time.perf_counter()
        stats.answered += 1
        if stats.in_window(t1):
            stats.answered_in_window += 1
        if measured:
            samples = stats.latency_ms.get(action)
            if samples is None:
                samples = stats.latency_ms[action] = array("d")
            samples.append((t1 - t0) * 1000.0)
        if frame[0] == 3:
            return frame[2] if isinstance(frame[2], dict) else {}
        code = str(frame[2]) if len(frame) > 2 else "?"
        stats.callerrors[f"{action}: {code}"] += 1
        if measured:
            stats.callerrors_in_window += 1
        detail = frame[3] if len(frame) > 3 else ""
        stats.note(f"{self.model.station_id}: {action} -> CALLERROR {code} {detail}")
        return None

    async def _read(self) -> None:
        ws = self.ws
        assert ws is not None
        try:
            async for raw in ws:
                try:
                    msg = json.loads(raw)
                    kind, mid = msg[0], msg[1]
                except (ValueError, TypeError, IndexError, KeyError):
                    self.stats.bad_frames += 1
                    continue
                if kind in (3, 4):
                    pending = self._pending
                    if pending is not None and pending[0] == mid and not pending[1].done():
                        pending[1].set_result(msg)
                    else:
                        self.stats.late_answers += 1
                elif kind == 2:
                    action = str(msg[2]) if len(msg) > 2 else "?"
                    self.stats.server_calls[action] += 1
                    reply = [4, mid, "NotImplemented", "not simulated by the benchmark", {}]
                    await ws.send(_DUMPS(reply))
                else:
                    self.stats.bad_frames += 1
        except ConnectionClosed:
            pass
        finally:
            self.alive = False
            pending = self._pending
            if pending is not None and not pending[1].done():
                pending[1].set_exception(ConnectionError("connection closed"))

    # ------------------------------------------------------------ life

    async def connect_and_boot(self) -> bool:
        """Handshake, BootNotification, StatusNotification per connector."""
        s = self.settings
        stats = self.stats
        t0 = time.perf_counter()
        try:
            self.ws = await connect(
                f"{s.server_url}/{self.model.station_id}",
                subprotocols=[Subprotocol(self.model.subprotocol)],
                compression=None,
                proxy=None,
                open_timeout=s.open_timeout,
                ping_interval=None,
                close_timeout=2,
                user_agent_header=None,
            )
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            stats.connect_failures[f"handshake: {type(exc).__name__}"] += 1
            stats.connect_failure_ms.append((time.perf_counter() - t0) * 1000.0)
            stats.note(f"{self.model.station_id}: connect failed: {exc!r}")
            return False
        if self.ws.subprotocol != self.model.subprotocol:
            stats.connect_failures["handshake: subprotocol not accepted"] += 1
            await self.ws.close()
            return False
        self.alive = True
        self.reader = asyncio.create_task(self._read())
        try:
            answer = await self.call(*self.model.boot())
            if answer is None or answer.get("status") != "Accepted":
                status = None if answer is None else answer.get("status")
                stats.connect_failures[f"boot: {status or 'no answer'}"] += 1
                await self.close()  # a station that is not accepted does not stay connected
                return False
            stats.connect_ms.append((time.perf_counter() - t0) * 1000.0)
            if s.mix == "default":
                for action, payload in self.model.initial_status():
                    await self.call(action, payload)
        except StationGone:
            stats.connect_failures["boot: disconnected"] += 1
            return False
        stats.connected += 1
        return True

    async def operate(self) -> None:
        """Heartbeats and back-to-back charging sessions until the run stops."""
        s = self.settings
        rng = self.rng
        model = self.model
        loop = asyncio.get_running_loop()
        now = loop.time()
        next_heartbeat = now + rng.uniform(0.0, s.heartbeat_interval)
        next_plug_in = now + rng.uniform(0.0, s.meter_interval)  # shortly after boot
        next_meter = session_end = math.inf
        last_meter = now
        while not self.stats.stopping:
            due = min(next_heartbeat, next_plug_in, next_meter, session_end)
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stats.stopping:
                return
            now = loop.time()
            if next_heartbeat <= now:
                await self.call(*model.heartbeat())
                next_heartbeat = now + s.heartbeat_interval
            elif next_plug_in <= now:
                next_plug_in = math.inf
                async for _ in self._session_start():
                    pass
                if self._session_ok:
                    last_meter = loop.time()
                    next_meter = last_meter + s.meter_interval
                    session_end = last_meter + rng.uniform(s.session_min_s, s.session_max_s)
                else:  # try again a little later
                    next_plug_in = loop.time() + s.meter_interval
            elif session_end <= now:
                model.advance(now - last_meter)
                async for _ in self._session_end():
                    pass
                next_meter = session_end = math.inf
                next_plug_in = loop.time() + rng.uniform(0.0, s.gap_max_s)
            elif next_meter <= now:
                model.advance(now - last_meter)
                last_meter = now
                await self.call(*model.meter_values())
                next_meter += s.meter_interval
                if next_meter < loop.time():  # fell behind: skip, do not burst
                    next_meter = loop.time() + s.meter_interval

    # A session as steps: each ``yield`` follows exactly one call, so closed and
    # open modes can pace the station call by call; paced mode runs them through.

    async def _session_start(self):
        """Authorize (1.6), start the transaction, report Charging; sets ``_session_ok``."""
        model = self.model
        self._session_ok = False
        model.begin_session(self.rng.randrange(ID_TOKEN_COUNT))
        if model.version == V16:
            answer = await self.call(*model.authorize())
            if answer is not None:
                self.stats.auth_status[answer.get("idTagInfo", {}).get("status", "?")] += 1
            yield
            answer = await self.call(*model.start_transaction())
            if answer is None or "transactionId" not in answer:
                model.abandon_transaction()
                yield
                return
            model.started(answer["transactionId"])
        else:
            answer = await self.call(*model.start_transaction())
            if answer is None:
                model.abandon_transaction()
                yield
                return
            status = answer.get("idTokenInfo", {}).get("status")
            if status:
                self.stats.auth_status[status] += 1
        self.stats.sessions_started += 1
        self._session_ok = True
        yield
        await self.call(*self.model.status(1, "Charging"))
        yield

    async def _session_end(self):
        """Stop the transaction (the EV left) and report the connector Available."""
        await self.call(*self.model.stop_transaction())
        yield
        await self.call(*self.model.status(1, "Available"))
        self.stats.sessions_ended += 1
        yield

    async def _steps(self):
        """The station's mix, one call per step, for closed and open modes.

        Each station enters its cycle at a random point, so that at any moment
        the stations are spread over the whole cycle rather than all sending
        the same message in the same period.
        """
        model = self.model
        if self.settings.mix == "light16":
            cycle = (
                model.heartbeat,
                lambda: model.status(1, "Available"),
                model.light_meter_values,
            )
            i = self.rng.randrange(len(cycle))
            while True:
                await self.call(*cycle[i]())
                yield
                i = (i + 1) % len(cycle)
        loop = asyncio.get_running_loop()
        for _ in range(self.rng.randrange(SESSION_STEPS_MAX)):  # as if mid-cycle: idle time
            await self.call(*model.heartbeat())
            yield
        while True:
            await self.call(*model.heartbeat())
            yield
            async for _ in self._session_start():
                yield
            if not self._session_ok:
                continue
            last = loop.time()
            for _ in range(self.rng.randint(3, SESSION_STEPS_MAX - 6)):
                model.advance(loop.time() - last)
                last = loop.time()
                await self.call(*model.meter_values())
                yield
            model.advance(loop.time() - last)
            async for _ in self._session_end():
                yield

    async def closed_loop(self) -> None:
        steps = self._steps()
        while not self.stats.stopping:
            await anext(steps)

    async def open_loop(self) -> None:
        """One step every period on a fixed schedule; a late step is still timed from its slot."""
        period = 1.0 / self.settings.rate_per_station
        due = time.perf_counter() + self.rng.uniform(0.0, period)
        steps = self._steps()
        while not self.stats.stopping:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stats.stopping:
                return
            self._scheduled = due
            await anext(steps)
            due += period

    async def run(self, settled: asyncio.Event, total: int, go: asyncio.Event) -> None:
        try:
            ok = await self.connect_and_boot()
        except Exception as exc:  # a bug of ours: count it, never hang the run
            self.stats.connect_failures[f"generator: {type(exc).__name__}"] += 1
            self.stats.note(f"{self.model.station_id}: {traceback.format_exc(limit=3)}")
            ok = False
        finally:
            self.stats.settled += 1
            if self.stats.settled >= total:
                settled.set()
        if not ok:
            return
        try:
            await go.wait()
            if self.settings.mode == "closed":
                await self.closed_loop()
            elif self.settings.mode == "open":
                await self.open_loop()
            else:
                await self.operate()
        except StationGone:
            if not self.stats.stopping:
                self.stats.disconnects += 1
                if self.stats.in_window(time.perf_counter()):
                    self.stats.disconnects_in_window += 1
                code = self.ws.close_code if self.ws is not None else None
                self.stats.note(f"{self.model.station_id}: disconnected (close code {code})")

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader


def split_stations(
    run_tag: str, stations: int, v201_share: float, clients: int
) -> list[list[StationSpec]]:
    """Station ids and versions, dealt round-robin to ``clients`` processes.

    Versions are interleaved evenly: exactly ``floor(stations * share)`` speak 2.0.1.
    """
    groups: list[list[StationSpec]] = [[] for _ in range(clients)]
    for i in range(stations):
        v201 = math.floor((i + 1) * v201_share) > math.floor(i * v201_share)
        spec = StationSpec(f"bench-{run_tag}-{i:05d}", V201 if v201 else V16)
        groups[i % clients].append(spec)
    return groups


# ---------------------------------------------------------------- process


class _Control:
    """Commands from the orchestrator, read without blocking the event loop.

    "connect" and "start" are queued for the driver; "stop" (or the pipe
    closing) cancels the driver task at whatever it is doing.
    """

    def __init__(self, conn: Any, driver: asyncio.Task) -> None:
        self.conn = conn
        self.driver = driver
        self.messages: asyncio.Queue[str] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                msg = self.conn.recv()
                if msg == "stop":
                    self._stop()
                    return
                self.messages.put_nowait(msg)
        except (EOFError, OSError):
            self._stop()

    def _stop(self) -> None:
        self.close()
        self.driver.cancel()

    async def expect(self, wanted: str, timeout: float) -> bool:
        """True when ``wanted`` arrives, False after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                return await self.messages.get() == wanted
        except TimeoutError:
            return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.conn.fileno())


async def _drive(
    specs: list[StationSpec], settings: LoadSettings, conn: Any, index: int
) -> dict | None:
    driver = asyncio.current_task()
    assert driver is not None
    control = _Control(conn, driver)
    stats = Stats()
    rng = random.Random(settings.seed * 1_000_003 + index)
    stations = [
        SimStation(spec, settings, stats, random.Random(rng.getrandbits(64))) for spec in specs
    ]
    tasks: list[asyncio.Task] = []
    if settings.mix not in MIXES or settings.mode not in MODES:
        raise ValueError(f"unknown mix {settings.mix!r} or mode {settings.mode!r}")
    try:
        conn.send(("loaded", None))
        if not await control.expect("connect", timeout=300):
            return None
        settled = asyncio.Event()
        go = asyncio.Event()
        if not stations:
            settled.set()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for j, st in enumerate(stations):
            delay = t0 + j / settings.connect_rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(st.run(settled, len(stations), go)))
        # Every station settles within open_timeout + four call timeouts.
        bound = settings.open_timeout + 4 * settings.call_timeout + 5
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bound):
                await settled.wait()
        conn.send(("ready", {"connected": stats.connected, "elapsed_s": loop.time() - t0}))
        if not await control.expect("start", timeout=3600):
            return None
        stats.window_start = time.perf_counter() + settings.warmup
        stats.window_end = stats.window_start + settings.duration
        go.set()
        await asyncio.sleep(settings.warmup + settings.duration)
        # Stop sending; let calls in flight finish (bounded by their timeout).
        stats.stopping = True
        for st, task in zip(stations, tasks, strict=False):
            if not st.in_call:
                task.cancel()
        live = [t for t in tasks if not t.done()]
        if live:
            await asyncio.wait(live, timeout=settings.call_timeout + 2)
        return stats.export()
    except asyncio.CancelledError:
        return None  # told to stop, or the orchestrator is gone
    finally:
        stats.stopping = True
        control.close()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        closing = [asyncio.create_task(st.close()) for st in stations if st.ws is not None]
        if closing:
            await asyncio.wait(closing, timeout=10)


def worker_main(specs: list[StationSpec], settings: LoadSettings, conn: Any, index: int) -> None:
    """Entry point of a generator process (``multiprocessing`` target)."""
    # Ctrl-C reaches the whole process group: the orchestrator decides, we obey its pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile_limit()
    # thousands of connections per process: full collections of the whole heap
    # would stall the generator and show up as the server's latency
    tune_gc()
    try:
        result = asyncio.run(_drive(specs, settings, conn, index))
        if result is not None:
            conn.send(("result", result))
    except KeyboardInterrupt:
        pass
    except Exception:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))
    finally:
        with contextlib.suppress(Exception):
            conn.close()
