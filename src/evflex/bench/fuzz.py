"""``evflex bench fuzz``: a campaign of hostile input that should find nothing.

The benchmark starts ``evflex serve`` as a child process (SQLite by default),
connects ``good_stations`` well-behaved stations in a process of their own
(heartbeat, status, meter values, one request in flight, a pause between) and
measures their latency for ``baseline`` seconds. Then it sends at least
``inputs`` malformed and adversarial frames (see :mod:`evflex.bench.fuzzgen`
for the categories and what answer is right for each) over attacking
connections on OCPP 1.6, 2.0.1 and 2.1 while the good stations go on, and
judges every answer. Per version one connection sends only input that must be
refused, another input that the CSMS may take (huge values, deep nesting,
replays, floods) and frames over the size limit.

Then it checks:

* the server process never died: still the same PID, ``/health`` answers, a
  new station connects and gets its Heartbeat answered;
* every input got a right answer (counts per category and outcome);
  CALLERROR InternalError never (counted apart);
* the good stations' p50/p99 latency during the campaign against before;
* the database: the stations that sent only refused input have exactly the
  rows they had before in every table but the event log (``events``), and no
  table anywhere holds a non-finite number; rows of the good stations and of
  the stations whose input may be taken are counted, not judged;
* the event log still reads (``GET /api/v1/events``) and the server log size.

Last, ``http_cases`` generated requests go to every operation of the API's
``/openapi.json`` (:mod:`evflex.bench.fuzzhttp`), as admin and without
credentials: no 5xx, and every 4xx says why (``detail``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import secrets
import tempfile
import time
import traceback
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import sqlalchemy as sa
import typer
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from evflex.bench.frames import V16, V201, StationModel
from evflex.bench.fuzzgen import (
    CATEGORIES,
    SUBPROTOCOLS,
    V21,
    VERSIONS,
    Input,
    OcppFuzzer,
    split_counts,
)
from evflex.bench.fuzzhttp import PUBLIC_OPERATIONS, HttpFuzzResult, fuzz_api
from evflex.bench.ocpp import log_summary, percentile
from evflex.bench.results import stamped_path, validated, wide_console, write_json
from evflex.bench.server import ServerProcess
from evflex.csms.v16 import V16Handlers
from evflex.csms.v21 import V21Handlers
from evflex.csms.v201 import V201Handlers

HANDLERS = {V16: V16Handlers, V201: V201Handlers, V21: V21Handlers}
OUTCOMES = (
    "right",
    "wrong_code",
    "result_to_garbage",
    "no_answer",
    "closed",
    "internal_error",
    "answered_silent",
)
#: Tables that change on their own while a node runs (the site sampler), or with every API
#: write and refusal, good or bad (the audit trail).
_SELF_CHANGING = frozenset({"site_samples", "evflex_schema", "audit_log", "audit_chain"})
#: Tables whose new rows the refused input may legitimately cause: the event log.
_EVENT_LOG = frozenset({"events"})


@dataclass
class FuzzConfig:
    inputs: int = 100_000
    good_stations: int = 20
    seed: int | None = None
    database_url: str | None = None
    out: Path | None = None
    http_cases: int = 2_000
    baseline: float = 10.0  # seconds of good-station latency before the campaign
    good_interval: float = 0.5  # pause between a good station's requests (s)
    batch: int = 40  # inputs sent before reading answers (floods are bigger)
    answer_timeout: float = 30.0
    max_frame_bytes: int = 1_048_576
    versions: tuple[str, ...] = VERSIONS

    def validate(self) -> None:
        if self.inputs < len(CATEGORIES):
            raise ValueError(f"inputs must be at least {len(CATEGORIES)}")
        if self.good_stations < 1:
            raise ValueError("good-stations must be at least 1")
        if self.http_cases < 0 or self.baseline <= 0 or self.good_interval <= 0:
            raise ValueError("http-cases, baseline and good-interval must be positive")
        if not 1 <= self.batch <= 90:
            raise ValueError("batch must be between 1 and 90")
        if not set(self.versions) <= set(VERSIONS) or not self.versions:
            raise ValueError(f"versions: choose from {', '.join(VERSIONS)}")


# ---------------------------------------------------------------- good stations


def _good_main(url: str, ids: list[str], interval: float, conn: Any) -> None:
    """A child process: well-behaved stations until told to stop; sends their samples."""
    try:
        samples = asyncio.run(_good_stations(url, ids, interval, conn))
        conn.send(("result", samples))
    except Exception:
        conn.send(("error", traceback.format_exc()))


async def _good_stations(url: str, ids: list[str], interval: float, conn: Any) -> dict:
    stop = asyncio.Event()
    samples: list[tuple[float, float]] = []
    errors: Counter[str] = Counter()
    booted = 0
    settled = asyncio.Event()  # every station booted or failed

    async def station(i: int, station_id: str) -> None:
        try:
            await run_station(i, station_id)
        finally:
            if booted == len(ids) or all(t.done() or t is asyncio.current_task() for t in tasks):
                settled.set()

    async def run_station(i: int, station_id: str) -> None:
        nonlocal booted
        model = StationModel(station_id, V16 if i % 2 == 0 else V201, random.Random(i))
        async with connect(f"{url}/{station_id}", subprotocols=[model.subprotocol],
                           open_timeout=30, ping_interval=None) as ws:  # fmt: skip
            await _request(ws, *model.boot())
            booted += 1
            if booted == len(ids):
                settled.set()
            steps = (model.heartbeat, lambda: model.status(1, "Available"),
                     model.light_meter_values)  # fmt: skip
            n = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    answer = await asyncio.wait_for(_request(ws, *steps[n % 3]()), 30)
                except (TimeoutError, ConnectionClosed) as exc:
                    errors[type(exc).__name__] += 1
                    return
                n += 1
                if answer[0] != 3:
                    errors[f"CALLERROR {answer[2]}"] += 1
                samples.append((time.time(), (time.perf_counter() - t0) * 1000.0))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval * random.uniform(0.5, 1.5))

    tasks = [asyncio.create_task(station(i, s)) for i, s in enumerate(ids)]
    loop = asyncio.get_running_loop()
    await settled.wait()
    conn.send(("ready", booted))
    await loop.run_in_executor(None, conn.recv)  # "stop"
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"samples": samples, "errors": dict(errors), "booted": booted}


async def _request(ws: ClientConnection, action: str, payload: dict) -> list:
    """Send a CALL and return its answer; the CSMS's own CALLs are refused meanwhile."""
    mid = secrets.token_hex(6)
    await ws.send(orjson.dumps([2, mid, action, payload]).decode())
    while True:
        msg = orjson.loads(await ws.recv())
        if msg[0] == 2:
            await ws.send(orjson.dumps([4, msg[1], "NotImplemented", "", {}]).decode())
        elif msg[1] == mid:
            return msg


class GoodStations:
    """The good stations' process and the pipe to it."""

    def __init__(self, url: str, ids: list[str], interval: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_good_main, args=(url, ids, interval, child), daemon=True)
        self.proc.start()
        child.close()

    def _recv(self, kind: str, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"the good stations sent no '{kind}' in {timeout:.0f} s")
        got, payload = self.conn.recv()
        if got != kind:
            raise RuntimeError(f"the good stations failed:\n{payload}")
        return payload

    def ready(self, timeout: float = 120.0) -> int:
        return self._recv("ready", timeout)

    def stop(self, timeout: float = 60.0) -> dict:
        self.conn.send("stop")
        try:
            return self._recv("result", timeout)
        finally:
            self.close()

    def close(self) -> None:
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(3)


def latency(samples: list[tuple[float, float]], t0: float, t1: float) -> dict[str, Any]:
    values = sorted(ms for t, ms in samples if t0 <= t < t1)
    return {
        "requests": len(values),
        "p50_ms": _r(percentile(values, 50)),
        "p99_ms": _r(percentile(values, 99)),
        "max_ms": _r(values[-1] if values else None),
    }


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------- attackers


@dataclass
class Tally:
    """What the campaign sent and got back."""

    sent: Counter[str] = field(default_factory=Counter)  # per category
    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    per_version: Counter[str] = field(default_factory=Counter)
    unexpected_answers: int = 0
    unclaimed_internal_errors: int = 0
    reconnects: int = 0
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)  # per version
    samples: list[str] = field(default_factory=list)

    def add(self, version: str, inp: Input, outcome: str, got: Any) -> None:
        self.sent[inp.category] += 1
        self.per_version[version] += 1
        self.outcomes[inp.category][outcome] += 1
        if outcome != "right" and len(self.samples) < 40:
            frame = inp.frame if isinstance(inp.frame, str) else repr(inp.frame)
            shown = orjson.dumps(got).decode()[:160] if got is not None else outcome
            self.samples.append(
                f"{version} {inp.category} {inp.action} {inp.note[:80]}: {outcome}: "
                f"got {shown}; frame {frame[:120]}"
            )


class Feed:
    """One version's inputs, made on demand and split by whether they may be taken."""

    def __init__(self, fuzzer: OcppFuzzer, total: int, seed: int, batch: int) -> None:
        self.fuzzer = fuzzer
        self.rng = random.Random(f"feed:{fuzzer.version}:{seed}")
        self.left = split_counts(total)
        self.queues: dict[str, deque[list[Input]]] = {"refused": deque(), "taken": deque()}
        self._open: dict[str, list[Input]] = {"refused": [], "taken": []}
        self.batch = batch

    def _produce(self) -> bool:
        cats = [c for c, n in self.left.items() if n > 0]
        if not cats:
            for kind, items in self._open.items():
                if items:
                    self.queues[kind].append(items)
                    self._open[kind] = []
            return False
        cat = self.rng.choices(cats, weights=[self.left[c] for c in cats])[0]
        made = self.fuzzer.make(cat)
        if not made:  # nothing in this version to mutate that way: wrong types instead
            self.left["wrong_type"] += self.left[cat]
            self.left[cat] = 0
            return True
        self.left[cat] -= len(made)
        if cat in ("flood", "oversize"):
            self.queues["taken"].append(made)
            return True
        kind = "taken" if any(i.result_ok for i in made) else "refused"
        self._open[kind].extend(made)
        if len(self._open[kind]) >= self.batch:
            self.queues[kind].append(self._open[kind])
            self._open[kind] = []
        return True

    def next_batch(self, kind: str) -> list[Input] | None:
        while not self.queues[kind]:
            if not self._produce() and not self.queues[kind]:
                return None
        return self.queues[kind].popleft()


def _boot(version: str) -> tuple[str, dict]:
    model = StationModel("fuzz", V16 if version == V16 else V201, random.Random(0))
    return model.boot()


class Attacker:
    """One attacking connection: sends batches, reads answers, judges them."""

    def __init__(
        self, url: str, station_id: str, feed: Feed, kind: str, tally: Tally, config: FuzzConfig
    ) -> None:
        self.url = f"{url}/{station_id}"
        self.station_id = station_id
        self.feed = feed
        self.version = feed.fuzzer.version
        self.kind = kind
        self.tally = tally
        self.config = config
        self.ws: ClientConnection | None = None

    async def open(self) -> None:
        self.ws = await connect(self.url, subprotocols=[SUBPROTOCOLS[self.version]],  # type: ignore[list-item]
                                max_size=None, open_timeout=30, ping_interval=None)  # fmt: skip
        await asyncio.wait_for(_request(self.ws, *_boot(self.version)), self.config.answer_timeout)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def run(self) -> None:
        while (batch := self.feed.next_batch(self.kind)) is not None:
            if self.ws is None:
                await self._reconnect()
            try:
                if batch[0].category == "oversize":
                    await self._oversize(batch[0])
                else:
                    await self._batch(batch)
            except ConnectionClosed:
                self.ws = None

    async def _reconnect(self) -> None:
        self.tally.reconnects += 1
        for attempt in range(20):
            try:
                await self.open()
                return
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed):
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        raise RuntimeError(f"{self.station_id}: cannot connect again")

    async def _oversize(self, inp: Input) -> None:
        assert self.ws is not None
        try:
            await self.ws.send(inp.frame)
            while True:  # until it closes; anything else is the wrong answer
                msg = orjson.loads(
                    await asyncio.wait_for(self.ws.recv(), self.config.answer_timeout)
                )
                if msg[0] != 2:  # answered instead of closed
                    self.tally.add(self.version, inp, _outcome(inp, msg, False), msg)
                    return
        except ConnectionClosed:
            self.tally.add(self.version, inp, "right", None)
            self.ws = None
        except TimeoutError:
            self.tally.add(self.version, inp, "no_answer", None)

    async def _batch(self, batch: list[Input]) -> None:
        ws = self.ws
        assert ws is not None
        flood = batch[0].category == "flood"
        answers: dict[str, deque[list]] = defaultdict(deque)
        closed = False
        want = Counter(i.ids[0] for i in batch if i.ids and not i.silent and not i.optional)
        probe_id, probe = self.feed.fuzzer.probe()
        try:
            for inp in batch:
                await ws.send(inp.frame)
            if not flood:
                await ws.send(probe)
            deadline = time.monotonic() + self.config.answer_timeout
            while True:
                if flood and all(len(answers[m]) >= n for m, n in want.items()):
                    break
                remaining = deadline - time.monotonic()
                msg = orjson.loads(await asyncio.wait_for(ws.recv(), max(0.01, remaining)))
                if not isinstance(msg, list) or len(msg) < 2:
                    continue
                if msg[0] == 2:  # the CSMS asks something: not ours to do
                    await ws.send(orjson.dumps([4, msg[1], "NotImplemented", "", {}]).decode())
                    continue
                if msg[1] == probe_id:
                    break
                answers[str(msg[1])].append(msg)
        except ConnectionClosed:
            closed = True
            self.ws = None
        except TimeoutError:  # what is unanswered by now gets no answer
            with contextlib.suppress(Exception):  # and the connection is not trusted further
                await ws.close()
            self.ws = None
        self._judge(batch, answers, closed)

    def _judge(self, batch: list[Input], answers: dict[str, deque[list]], closed: bool) -> None:
        for inp in batch:
            msg = None
            for mid in inp.ids:
                if answers.get(mid):
                    msg = answers[mid].popleft()
                    break
            self.tally.add(self.version, inp, _outcome(inp, msg, closed), msg)
        for msg in (msg for q in answers.values() for msg in q):  # answers no input claimed
            self.tally.unexpected_answers += 1
            self.tally.unclaimed_internal_errors += msg[0] == 4 and msg[2] == "InternalError"
            if len(self.tally.samples) < 40:
                self.tally.samples.append(f"{self.version} unexpected answer {msg!r:.160}")


def _outcome(inp: Input, msg: list | None, closed: bool) -> str:
    if inp.silent:
        return "right" if msg is None else "answered_silent"
    if msg is None:
        if inp.optional:
            return "right"
        if closed:
            return "right" if inp.closes else "closed"
        return "no_answer"
    if msg[0] == 3:
        return "right" if inp.result_ok else "result_to_garbage"
    code = msg[2] if len(msg) > 2 else None
    if code == "InternalError":
        return "internal_error"
    return "right" if code in inp.codes else "wrong_code"


# ---------------------------------------------------------------- the database


async def db_snapshot(url: str, groups: dict[str, set[str]]) -> dict[str, Any]:
    """Rows per table and per station group; non-finite numbers per column."""
    engine = create_async_engine(url)
    counts: dict[str, dict[str, int]] = {}
    non_finite: dict[str, int] = {}
    try:
        async with engine.connect() as conn:
            meta = sa.MetaData()
            await conn.run_sync(meta.reflect)
            for name, table in sorted(meta.tables.items()):
                key = table.c.get("station_id")
                if key is None and name == "stations":
                    key = table.c.get("id")
                row: dict[str, int] = Counter()
                if key is None:
                    row["other"] = (
                        await conn.execute(sa.select(sa.func.count()).select_from(table))
                    ).scalar_one()
                else:
                    query = sa.select(key, sa.func.count()).group_by(key)
                    for station, n in (await conn.execute(query)).all():
                        row[_group_of(station, groups)] += n
                counts[name] = dict(row)
                for c in table.c:
                    if isinstance(c.type, sa.Float | sa.Numeric):  # +-inf (and NaN on PostgreSQL)
                        where = sa.or_(c > 1.7e308, c < -1.7e308)
                        query = sa.select(sa.func.count()).select_from(table).where(where)
                        non_finite[f"{name}.{c.name}"] = (await conn.execute(query)).scalar_one()
    finally:
        await engine.dispose()
    return {"rows": counts, "non_finite": non_finite}


def _group_of(station: str | None, groups: dict[str, set[str]]) -> str:
    for group, members in groups.items():
        if station in members:
            return group
    return "other"


def db_verdict(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What changed, and whether the refused input changed anything it must not."""
    changed: dict[str, dict[str, int]] = {}
    violations = []
    for table in sorted(set(before["rows"]) | set(after["rows"])):
        b, a = before["rows"].get(table, {}), after["rows"].get(table, {})
        delta = {
            g: a.get(g, 0) - b.get(g, 0) for g in set(a) | set(b) if a.get(g, 0) != b.get(g, 0)
        }
        if delta:
            changed[table] = delta
        if table in _SELF_CHANGING:
            continue
        for group in ("refused", "other"):
            if group == "refused" and table in _EVENT_LOG:
                continue
            if delta.get(group):
                violations.append(f"{table}: {delta[group]:+d} rows of {group} input")
    non_finite = {table: n for table, n in after["non_finite"].items() if n}
    return {
        "ok": not violations and not non_finite,
        "refused_input_changed_nothing": not violations,
        "violations": violations,
        "changed": changed,
        "non_finite": non_finite,
    }


# ---------------------------------------------------------------- the run


async def _campaign(
    config: FuzzConfig, url: str, seed: int, tag: str, say: Callable[[str], None]
) -> tuple[Tally, list[Attacker], dict[str, set[str]]]:
    tally = Tally()
    attackers: list[Attacker] = []
    share = -(-config.inputs // len(config.versions))
    for version in config.versions:
        handled = frozenset(HANDLERS[version].actions())
        fuzzer = OcppFuzzer(version, seed, handled, config.max_frame_bytes)
        tally.actions[version] = {
            "with_template": len({t.action for t in fuzzer.templates}),
            "without_template": fuzzer.failed,
            "handled_by_the_csms": len(handled),
        }
        feed = Feed(fuzzer, share, seed, config.batch)
        short = version.replace(".", "")
        for kind in ("refused", "taken"):
            station = f"fuzz-{tag}-{short}-{kind}"
            attackers.append(Attacker(url, station, feed, kind, tally, config))
    groups = {
        "refused": {a.station_id for a in attackers if a.kind == "refused"},
        "taken": {a.station_id for a in attackers if a.kind == "taken"},
    }
    await asyncio.gather(*(a.open() for a in attackers))
    say(f"{len(attackers)} attacking connections booted")
    return tally, attackers, groups


async def _still_serving(url: str, tag: str) -> bool:
    """A new station connects, boots and gets its Heartbeat answered."""
    try:
        async with connect(f"{url}/fuzz-{tag}-after", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                           open_timeout=30, ping_interval=None) as ws:  # fmt: skip
            await asyncio.wait_for(_request(ws, *_boot(V16)), 30)
            answer = await asyncio.wait_for(_request(ws, "Heartbeat", {}), 30)
            return answer[0] == 3
    except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed):
        return False


async def _run(config: FuzzConfig, server: ServerProcess, seed: int, tag: str,
               say: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    pid = server.pid
    good_ids = [f"good-{tag}-{i:03d}" for i in range(config.good_stations)]
    good = GoodStations(server.ocpp_url, good_ids, config.good_interval)
    try:
        booted = await asyncio.get_running_loop().run_in_executor(None, good.ready)
        say(f"{booted}/{len(good_ids)} good stations up; baseline {config.baseline:g} s")
        tally, attackers, groups = await _campaign(config, server.ocpp_url, seed, tag, say)
        groups["good"] = {*good_ids, f"fuzz-{tag}-after"}  # and the station that comes after
        t_base = time.time()
        await asyncio.sleep(config.baseline)
        before = await db_snapshot(server.database_url, groups)
        say(f"sending {config.inputs:,} inputs")
        t_start = time.time()
        await asyncio.gather(*(a.run() for a in attackers))
        t_end = time.time()
        for a in attackers:
            await a.close()
        good_result = await asyncio.get_running_loop().run_in_executor(None, good.stop)
    finally:
        good.close()
    say("campaign over; checking the server and the database")
    alive = server.alive() and server.pid == pid
    serving = await _still_serving(server.ocpp_url, tag)
    after = await db_snapshot(server.database_url, groups)
    headers = {"Authorization": f"Bearer {server.api_token}"}
    async with httpx.AsyncClient(timeout=30, headers=headers, trust_env=False) as client:
        health = (await client.get(f"{server.api_url}/health")).status_code
        events = (await client.get(f"{server.api_url}/events", params={"limit": 1000})).status_code
    samples = good_result["samples"]
    base = latency(samples, t_base, t_start)
    during = latency(samples, t_start, t_end)
    return {
        "tally": tally,
        "alive": alive and health == 200 and serving,
        "pid_unchanged": server.pid == pid and server.alive(),
        "health_status": health,
        "new_station_served": serving,
        "events_status": events,
        "good": {
            "stations": len(good_ids),
            "booted": good_result["booted"],
            "errors": good_result["errors"],
            "before": base,
            "during": during,
            "p50_ratio": _ratio(during["p50_ms"], base["p50_ms"]),
            "p99_ratio": _ratio(during["p99_ms"], base["p99_ms"]),
        },
        "campaign_s": round(t_end - t_start, 1),
        "database": db_verdict(before, after),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def run_fuzz(config: FuzzConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the campaign (and the API part), write the JSON file, return the result."""
    say = progress or (lambda _msg: None)
    config.validate()
    started = datetime.now(UTC)
    seed = config.seed if config.seed is not None else secrets.randbits(31)
    tag = secrets.token_hex(3)
    out = (
        Path(config.out)
        if config.out is not None
        else stamped_path(f"fuzz-{config.inputs}", started)
    )
    with tempfile.TemporaryDirectory(prefix="evflex-fuzz-") as tmp:
        db_url = config.database_url or f"sqlite+aiosqlite:///{tmp}/fuzz.db"
        server = ServerProcess(db_url, Path(tmp) / "server.log")
        say(f"starting evflex serve ({db_url.split(':', 1)[0]})")
        with server:
            server.start()
            run = asyncio.run(_run(config, server, seed, tag, say))
            http = HttpFuzzResult()
            if config.http_cases:
                say(f"{config.http_cases:,} API requests")
                http = fuzz_api(server.api_url.removesuffix("/api/v1"), server.api_token or "",
                                config.http_cases, seed, known_station=f"fuzz-{tag}-16-taken")  # fmt: skip
            alive_end = server.alive() and server.pid is not None
            log_size = server.log_path.stat().st_size
            exit_code = server.stop()
            log = log_summary(server.log_path.read_text(errors="replace"))
    result = _result(config, started, seed, run, http, alive_end, exit_code, log, log_size)
    write_json(out, result)
    result["out"] = str(out)
    return result


def _result(config: FuzzConfig, started: datetime, seed: int, run: dict, http: HttpFuzzResult,
            alive_end: bool, exit_code: int | None, log: dict, log_size: int) -> dict[str, Any]:  # fmt: skip
    tally: Tally = run["tally"]
    outcomes = {c: dict(tally.outcomes[c]) for c in CATEGORIES if tally.sent[c]}
    totals: Counter[str] = Counter()
    for c in outcomes.values():
        totals.update(c)
    wrong = sum(n for k, n in totals.items() if k != "right") + tally.unexpected_answers
    ratio = run["good"]["p99_ratio"]
    checks = {
        "process_alive": bool(run["alive"] and alive_end),
        "good_stations_served": run["good"]["booted"] == config.good_stations
        and not run["good"]["errors"],
        "inputs_sent": sum(tally.sent.values()) >= config.inputs,
        "every_input_answered_right": wrong == 0,
        "no_internal_error": totals["internal_error"] + tally.unclaimed_internal_errors == 0,
        "latency_within_2x": all(
            r is not None and r <= 2.0 for r in (ratio, run["good"]["p50_ratio"])
        ),
        "database_unchanged_by_refused_input": run["database"]["ok"],
        "event_log_reads": run["events_status"] == 200,
        "no_traceback_in_log": log["tracebacks"] == 0,
        "api_no_5xx": http.server_errors == 0,
        "api_4xx_with_reason": http.without_reason == 0,
        "api_refuses_without_credentials": set(http.unauthenticated_ok) <= PUBLIC_OPERATIONS,
    }
    return {
        "benchmark": "fuzz",
        "ok": all(checks.values()),
        "checks": checks,
        "inputs": sum(tally.sent.values()),
        "inputs_per_category": dict(tally.sent),
        "inputs_per_version": dict(tally.per_version),
        "actions": tally.actions,
        "outcomes": outcomes,
        "outcome_totals": dict(totals),
        "wrong_answers": wrong,
        "internal_errors": totals["internal_error"] + tally.unclaimed_internal_errors,
        "unexpected_answers": tally.unexpected_answers,
        "reconnects": tally.reconnects,
        "samples": tally.samples,
        "process": {
            "alive_after_campaign": run["alive"],
            "pid_unchanged": run["pid_unchanged"],
            "health_status": run["health_status"],
            "new_station_served": run["new_station_served"],
            "alive_at_end": alive_end,
            "exit_code": exit_code,
        },
        "good_stations": run["good"],
        "database": run["database"],
        "events_status": run["events_status"],
        "server_log_bytes": log_size,
        "server_log": log,
        "campaign_s": run["campaign_s"],
        "http": http.as_dict(),
        "settings": {
            "seed": seed,
            "inputs": config.inputs,
            "good_stations": config.good_stations,
            "good_interval_s": config.good_interval,
            "baseline_s": config.baseline,
            "batch": config.batch,
            "http_cases": config.http_cases,
            "database": (config.database_url or "sqlite").split(":", 1)[0],
        },
        "timestamp": started.isoformat(),
    }


# ---------------------------------------------------------------- output


def render_table(result: dict[str, Any]):
    from rich.table import Table

    table = Table(title=f"evflex bench fuzz: {result['inputs']:,} inputs "
                        f"({'ok' if result['ok'] else '[red]with findings[/]'})")  # fmt: skip
    table.add_column("category")
    for name in ("sent", *OUTCOMES[:-1], "silent answered"):
        table.add_column(name.replace("_", " "), justify="right")
    for cat, outcome in result["outcomes"].items():
        cells = [f"{result['inputs_per_category'][cat]:,}"]
        for name in OUTCOMES:
            n = outcome.get(name, 0)
            cells.append(f"{n:,}" if name == "right" or not n else f"[red]{n:,}[/]")
        table.add_row(cat, *cells)
    return table


def render_checks(result: dict[str, Any]):
    from rich.table import Table

    good = result["good_stations"]
    http = result["http"]
    table = Table(show_header=False, title="checks")
    table.add_column("check", style="bold")
    table.add_column("value", justify="right")
    table.add_column("ok")
    rows = [
        ("server alive, same PID, serving", str(result["process"]["pid_unchanged"]),
         "process_alive"),
        ("good stations booted, errors", f"{good['booted']}/{good['stations']}, "
         f"{sum(good['errors'].values())}", "good_stations_served"),
        ("InternalError answers", f"{result['internal_errors']:,}", "no_internal_error"),
        ("wrong answers", f"{result['wrong_answers']:,}", "every_input_answered_right"),
        ("good stations p50 before / during", _latency_cell(good, "p50"), None),
        ("good stations p99 before / during", _latency_cell(good, "p99"), "latency_within_2x"),
        ("database (refused input, non-finite)",
         "; ".join(result["database"]["violations"]
                   + [f"{t}: {n} non-finite" for t, n in result["database"]["non_finite"].items()])
         or "unchanged, all finite",
         "database_unchanged_by_refused_input"),
        ("GET /api/v1/events after", str(result["events_status"]), "event_log_reads"),
        ("server log", f"{result['server_log_bytes']:,} bytes, "
                       f"{result['server_log']['tracebacks']} tracebacks", "no_traceback_in_log"),
        ("API requests (5xx)", f"{http['requests']:,} ({http['server_errors']})", "api_no_5xx"),
        ("API 4xx without detail", str(http["without_reason"]), "api_4xx_with_reason"),
        ("API 2xx without credentials", ", ".join(http["unauthenticated_2xx"]) or "none",
         "api_refuses_without_credentials"),
    ]  # fmt: skip
    for name, value, check in rows:
        ok = "" if check is None else ("yes" if result["checks"][check] else "[red]NO[/]")
        table.add_row(name, value, ok)
    return table


def _latency_cell(good: dict[str, Any], p: str) -> str:
    before, during, ratio = good["before"][f"{p}_ms"], good["during"][f"{p}_ms"], good[f"{p}_ratio"]
    if during is None:
        return f"{before} ms / none during (a campaign shorter than one request)"
    return f"{before} / {during} ms (×{ratio})"


def bench_fuzz_command(
    inputs: Annotated[int, typer.Option(help="Adversarial OCPP inputs (at least)")] = 100_000,
    good_stations: Annotated[int, typer.Option(help="Well-behaved stations measured")] = 20,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: random)")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Store of the server (default: a fresh SQLite file)")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="JSON result file (default bench-results/fuzz-<inputs>-<time>.json)"),
    ] = None,
    http_cases: Annotated[int, typer.Option(help="Generated API requests (0: none)")] = 2_000,
    baseline: Annotated[float, typer.Option(help="Seconds of latency before the campaign")] = 10.0,
) -> None:
    """Malformed and hostile OCPP frames and API requests against one CSMS process."""
    console = wide_console(140)
    config = FuzzConfig(inputs=inputs, good_stations=good_stations, seed=seed,
                        database_url=database_url, out=out, http_cases=http_cases,
                        baseline=baseline)  # fmt: skip
    validated(config, console)
    try:
        result = run_fuzz(config, progress=lambda msg: console.print(f"[dim]… {msg}[/]"))
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]fuzz run failed: {exc}[/]")
        raise typer.Exit(1) from None
    console.print(render_table(result))
    console.print(render_checks(result))
    for line in result["samples"][:5]:
        console.print(f"  e.g. {line}", style="red", soft_wrap=True, markup=False)
    console.print(f"results: {result['out']}")
    if not result["ok"]:
        raise typer.Exit(1)
