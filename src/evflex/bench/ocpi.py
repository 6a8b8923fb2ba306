"""``evflex bench ocpi``: how many Session updates per second reach a roaming partner.

One evflex node in this process (a fresh SQLite file unless ``--database-url``) and a
partner: a minimal OCPI Sessions receiver on 127.0.0.1 (a bare ASGI app under
uvicorn that answers every request with the OCPI envelope, status 1000, and notes
the ``kwh`` of each session). The partner is registered in the node with a token
per session; N sessions are started through the CSMS's own path
(``CsmsService.transaction_update``, as a station's TransactionEvent would), each one
pushed as a PUT. Then, R times: every session gets a meter update (one more kWh), and
we measure the time until the partner has, for every session, a PATCH with the new
``kwh`` (``ocpi_session_update_s`` is 0 here: no throttling, every update is owed).

- ``end to end``: from the first update given to the CSMS to the last PATCH received;
  sessions per second = N / that time (the figure the issue asks for);
- ``push only``: from the moment the CSMS had applied every update to the last PATCH.

The baseline, in the same run: N plain HTTP PUTs of a Session-sized body by one
client to the same receiver, 16 at a time (as many as the outbox sends at once to
one partner): the transport's ceiling on this machine.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer

from evflex.bench.local_http import LocalHttp
from evflex.bench.results import stamped_path, write_json
from evflex.bench.server import in_process_node, stop_in_process_node
from evflex.domain.model import ENERGY_IMPORT_REGISTER, MeterSample, TransactionUpdate
from evflex.ocpi.outbox import PARALLEL
from evflex.ocpi.partners import add_registered
from evflex.store.ocpi_tables import OcpiToken
from evflex.store.tables import Station

EVSES_PER_STATION = 10
_OK = orjson.dumps({"status_code": 1000, "timestamp": "2026-01-01T00:00:00.000Z"})


@dataclass
class OcpiBenchConfig:
    sessions: int = 1000
    rounds: int = 5
    database_url: str | None = None
    timeout_s: float = 60.0


class Receiver:
    """The partner's Sessions receiver: counts sessions whose last ``kwh`` is ``target``."""

    def __init__(self) -> None:
        self.kwh: dict[str, float] = {}
        self.requests: dict[str, int] = {}
        self.target: float | None = None
        self.reached = 0
        self.want = 0
        self.last_at = 0.0
        self.done = asyncio.Event()
        self._http = LocalHttp(self)
        self.port = 0

    def expect(self, kwh: float, count: int) -> None:
        self.target, self.want, self.done = kwh, count, asyncio.Event()
        self.reached = sum(1 for v in self.kwh.values() if v == kwh)
        if self.reached >= count:
            self.done.set()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        method = scope["method"]
        self.requests[method] = self.requests.get(method, 0) + 1
        body = b"".join(chunks)
        if body and method in ("PUT", "PATCH"):
            kwh = orjson.loads(body).get("kwh")
            if kwh is not None:
                path = scope["path"]
                before = self.kwh.get(path)
                self.kwh[path] = kwh
                if self.target is not None and kwh == self.target and before != kwh:
                    self.reached += 1
                    self.last_at = time.perf_counter()
                    if self.reached >= self.want:
                        self.done.set()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": _OK})

    async def start(self) -> None:
        self.port = await self._http.start()

    async def stop(self) -> None:
        await self._http.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ocpi/2.2.1/sessions"


async def _setup(rt, receiver: Receiver, n: int) -> list[tuple[str, str, int, str]]:
    """Stations, the partner and its tokens; the sessions (station, tx id, evse, uid)."""
    now = rt.clock.now()
    stations = [f"OCPIB{i:04d}" for i in range((n + EVSES_PER_STATION - 1) // EVSES_PER_STATION)]
    sessions = [(stations[i // EVSES_PER_STATION], f"bench-{i}", i % EVSES_PER_STATION + 1,
                 f"BENCH{i:05d}") for i in range(n)]  # fmt: skip

    async def job(s) -> int:
        for sid in stations:
            s.add(Station(id=sid, created_at=now, connected=False))
        partner = await add_registered(
            s, rt.ocpi.box, now=now, token_in="bench-in", token_out="bench-out",
            roles=[{"role": "EMSP", "country_code": "DE", "party_id": "BEN",
                    "business_details": {"name": "bench"}}],
            endpoints=[{"identifier": "sessions", "role": "RECEIVER", "url": receiver.url}],
        )  # fmt: skip
        for _, _, _, uid in sessions:
            s.add(OcpiToken(partner_id=partner.id, country_code="DE", party_id="BEN", uid=uid,
                            type="RFID", contract_id=f"DE-BEN-{uid}", valid=True,
                            whitelist="ALWAYS", data={}, last_updated=now))  # fmt: skip
        return partner.id

    partner_id = await rt.writer.submit(job)
    rt.ocpi.adopt_partner(partner_id)  # registered in the store directly
    return sessions


async def _apply(rt, sessions, event: str, wh: float, at: datetime) -> None:
    """Give every session one TransactionEvent-like account, 64 at once."""
    gate = asyncio.Semaphore(64)

    async def one(station: str, tid: str, evse: int, uid: str) -> None:
        upd = TransactionUpdate(
            station, tid, event, at, evse_id=evse, connector_id=1,
            id_token=uid if event == "started" else None,
            samples=[MeterSample(at, ENERGY_IMPORT_REGISTER, wh, "Wh")],
        )  # fmt: skip
        async with gate:
            await rt.service.transaction_update(upd, live=True)

    await asyncio.gather(*(one(*x) for x in sessions))


async def baseline(receiver: Receiver, n: int, body: bytes) -> float:
    """Seconds for ``n`` plain PUTs, PARALLEL at a time, by one client."""
    gate = asyncio.Semaphore(PARALLEL)
    async with httpx.AsyncClient(timeout=30) as c:

        async def one(i: int) -> None:
            async with gate:
                r = await c.put(f"{receiver.url}/XX/BAS/{i}", content=body,
                                headers={"content-type": "application/json"})  # fmt: skip
                r.raise_for_status()

        await one(-1)  # the connection is open before the clock starts
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t0


async def run_ocpi_bench(cfg: OcpiBenchConfig, log=print) -> dict[str, Any]:
    receiver = Receiver()
    await receiver.start()
    keys = tempfile.TemporaryDirectory(prefix="evflex-bench-ocpi-key-")
    rt, tmp = await in_process_node(
        cfg.database_url, "evflex-bench-ocpi-", allow_unknown_stations=True,
        ocpi_session_update_s=0.0, ocpi_key_file=Path(keys.name) / "ocpi.key",
    )  # fmt: skip
    n = cfg.sessions
    result: dict[str, Any] = {
        "benchmark": "ocpi",
        "sessions": n,
        "database": "postgresql" if rt.settings.database_url.startswith("postgres") else "sqlite",
        "outbox_parallel": PARALLEL,
    }
    try:
        sessions = await _setup(rt, receiver, n)
        t0 = time.perf_counter()
        receiver.expect(0.0, n)
        await _apply(rt, sessions, "started", 0.0, datetime.now(UTC))
        await asyncio.wait_for(receiver.done.wait(), cfg.timeout_s)
        result["start_s"] = round(time.perf_counter() - t0, 3)
        log(f"{n} sessions started and pushed (PUT) in {result['start_s']} s")
        rounds = []
        for r in range(1, cfg.rounds + 1):
            receiver.expect(float(r), n)
            t0 = time.perf_counter()
            await _apply(rt, sessions, "updated", r * 1000.0, datetime.now(UTC))
            applied = time.perf_counter()
            await asyncio.wait_for(receiver.done.wait(), cfg.timeout_s)
            end_to_end = receiver.last_at - t0
            rounds.append({
                "round": r, "sessions": n, "apply_s": round(applied - t0, 4),
                "end_to_end_s": round(end_to_end, 4),
                "push_only_s": round(max(0.0, receiver.last_at - applied), 4),
                "sessions_per_s": round(n / end_to_end, 1),
            })  # fmt: skip
            log(f"round {r}: {n} PATCHes in {end_to_end:.3f} s ({n / end_to_end:,.0f}/s)")
        sample = orjson.dumps({"kwh": 1.0, "status": "ACTIVE", "last_updated": "x",
                               "charging_periods": [{"start_date_time": "x", "dimensions": [
                                   {"type": "ENERGY", "volume": 1.0}]}]})  # fmt: skip
        base_s = await baseline(receiver, n, sample)
        result["rounds"] = rounds
        result["sessions_per_s"] = statistics.median(x["sessions_per_s"] for x in rounds)
        result["end_to_end_s"] = statistics.median(x["end_to_end_s"] for x in rounds)
        result["push_only_s"] = statistics.median(x["push_only_s"] for x in rounds)
        result["baseline_s"] = round(base_s, 4)
        result["baseline_per_s"] = round(n / base_s, 1)
        result["ratio_to_baseline"] = round(result["sessions_per_s"] / result["baseline_per_s"], 3)
        result["pushes_queued"] = dict(rt.ocpi.state["sessions"].queued)
        result["requests_received"] = dict(receiver.requests)
    finally:
        await stop_in_process_node(rt, tmp)
        await receiver.stop()
        keys.cleanup()
    return result


def render(result: dict[str, Any]):
    from rich.table import Table

    table = Table(title=f"OCPI Session updates to one partner, {result['sessions']} sessions")
    for col in ("round", "apply s", "end to end s", "push only s", "sessions/s"):
        table.add_column(col, justify="right")
    for r in result.get("rounds", []):
        table.add_row(str(r["round"]), f"{r['apply_s']:.3f}", f"{r['end_to_end_s']:.3f}",
                      f"{r['push_only_s']:.3f}", f"{r['sessions_per_s']:,.0f}")  # fmt: skip
    table.add_row("median", "", f"{result['end_to_end_s']:.3f}", f"{result['push_only_s']:.3f}",
                  f"{result['sessions_per_s']:,.0f}")  # fmt: skip
    table.add_row("baseline", "", f"{result['baseline_s']:.3f}", "",
                  f"{result['baseline_per_s']:,.0f}")  # fmt: skip
    return table


def bench_ocpi_command(
    sessions: Annotated[int, typer.Option(help="Active sessions of the partner's tokens")] = 1000,
    rounds: Annotated[int, typer.Option(help="Rounds of one update per session")] = 5,
    database_url: Annotated[str | None, typer.Option(help="Default: a fresh SQLite file")] = None,
    out: Annotated[Path | None, typer.Option(help="JSON result file")] = None,
) -> None:
    """Session updates pushed per second to a partner, against plain HTTP PUTs."""
    from rich.console import Console

    if sessions < 1 or rounds < 1:
        raise typer.BadParameter("--sessions and --rounds must be at least 1")
    console = Console()
    cfg = OcpiBenchConfig(sessions, rounds, database_url)
    result = asyncio.run(run_ocpi_bench(cfg, log=console.print))
    console.print(render(result))
    console.print(
        f"{result['sessions_per_s']:,.0f} Session updates/s delivered (median of {rounds}); "
        f"plain PUTs: {result['baseline_per_s']:,.0f}/s (ratio {result['ratio_to_baseline']})"
    )
    out = out or stamped_path(f"ocpi-{sessions}")
    write_json(out, result)
    console.print(f"wrote {out}")
