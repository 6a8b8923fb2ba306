"""``evflex bench smartcharging``: how fast a site limit change reaches every EVSE.

One evflex node (in this process, on a fresh SQLite file unless told
otherwise) and ``--station-procs`` further processes of plain WebSocket
stations: S stations with E EVSEs each, every EVSE in a charging session,
all on one site. The stations answer SetChargingProfile at once with
Accepted, from a minimal loop (the message id is cut from the frame, the
answer is a fixed text), so the station side costs little next to the
CSMS. The site's import limit is then changed R times (down and up in
turn) through ``PATCH /api/v1/sites/{id}``; for each change we measure,
per EVSE, the time from the request to the CSMS receiving the station's
Accepted for the new profile (``ack``), the same from the moment the plan
was made (``round trip``: sending and answers only), and the planner's
compute time and model load time. The CPU the CSMS and the station
processes used during the rounds is reported too.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing as mp
import os
import re
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from evflex.bench.ocpp import percentile
from evflex.bench.results import stamped_path, write_json
from evflex.bench.server import api_client, in_process_node, stop_in_process_node


@dataclass
class SmartBenchConfig:
    evses: int = 1000
    evses_per_station: int = 2
    rounds: int = 5
    ocpp: str = "2.0.1"
    database_url: str | None = None
    policy: str = "equal"
    station_procs: int = 2


# ---------------------------------------------------------------- stations


async def _station(url: str, sid: str, evses: int, version: str, ready, counters) -> None:
    import websockets

    ids = itertools.count(1)
    sub = "ocpp" + version
    async with websockets.connect(
        f"{url}/{sid}", subprotocols=[sub], open_timeout=120, compression=None
    ) as ws:

        async def call(action: str, payload: dict) -> dict:
            mid = f"c{next(ids)}"
            await ws.send(json.dumps([2, mid, action, payload]))
            while True:
                msg = json.loads(await ws.recv())
                if msg[0] == 3 and msg[1] == mid:
                    return msg[2]
                if msg[0] == 2:
                    await _answer(ws, msg, counters)

        now = datetime.now(UTC).isoformat()
        if version == "1.6":
            await call("BootNotification", {"chargePointVendor": "bench", "chargePointModel": "sc"})
            for e in range(1, evses + 1):
                await call(
                    "StatusNotification",
                    {"connectorId": e, "errorCode": "NoError", "status": "Charging"},
                )
                await call(
                    "StartTransaction",
                    {"connectorId": e, "idTag": "BENCH", "meterStart": 0, "timestamp": now},
                )
        else:
            await call(
                "BootNotification",
                {"chargingStation": {"vendorName": "bench", "model": "sc"}, "reason": "PowerUp"},
            )
            for e in range(1, evses + 1):
                await call(
                    "StatusNotification",
                    {
                        "timestamp": now,
                        "connectorStatus": "Occupied",
                        "evseId": e,
                        "connectorId": 1,
                    },
                )
                await call(
                    "TransactionEvent",
                    {
                        "eventType": "Started",
                        "timestamp": now,
                        "triggerReason": "Authorized",
                        "seqNo": 0,
                        "transactionInfo": {
                            "transactionId": f"{sid}-{e}",
                            "chargingState": "Charging",
                        },
                        "evse": {"id": e, "connectorId": 1},
                        "idToken": {"idToken": "BENCH", "type": "Central"},
                    },
                )
        ready.release()
        await _serve(ws, counters)


#: A CALL's message id and action, cut from the frame without parsing the payload.
_CALL_HEAD = re.compile(r'\[\s*2\s*,\s*"([^"]*)"\s*,\s*"([^"]*)"')


async def _answer(ws, msg: list, counters: dict) -> None:
    action = msg[2]
    counters[action] = counters.get(action, 0) + 1
    await ws.send(_answer_text(msg[1], action))


def _answer_text(message_id: str, action: str) -> str:
    if action == "SetChargingProfile":
        return f'[3,"{message_id}",{{"status":"Accepted"}}]'
    return json.dumps([4, message_id, "NotImplemented", f"bench: no {action}", {}])


async def _serve(ws, counters: dict) -> None:
    """Answer the CSMS's CALLs until the socket closes: the minimal loop."""
    async for raw in ws:
        head = _CALL_HEAD.match(raw)
        if head is None:
            continue  # not a CALL (a late answer to one of ours)
        message_id, action = head.groups()
        counters[action] = counters.get(action, 0) + 1
        await ws.send(_answer_text(message_id, action))


def _stations_main(url: str, ids: list[str], evses: int, version: str, conn) -> None:
    async def main() -> None:
        ready = asyncio.Semaphore(0)
        counters: dict[str, int] = {}
        tasks = []
        for i, sid in enumerate(ids):
            tasks.append(asyncio.create_task(_station(url, sid, evses, version, ready, counters)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)
        for _ in ids:
            await ready.acquire()
        conn.send(("ready", len(ids)))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # "stop"
        conn.send(("counters", counters))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


# ---------------------------------------------------------------- the run


async def run_smartcharging_bench(cfg: SmartBenchConfig, log=print) -> dict[str, Any]:
    stations = max(1, cfg.evses // cfg.evses_per_station)
    n_evses = stations * cfg.evses_per_station
    # Setup time grows with the fleet: every EVSE reports a session first.
    timeout = 120.0 + n_evses * 0.05
    rt, tmp = await in_process_node(cfg.database_url, "evflex-bench-", allow_unknown_stations=False)
    acks = _Acks()
    rt.dispatcher.on_result(acks.on_result)
    http = api_client(rt, timeout)
    ids = [f"SC{i:05d}" for i in range(stations)]
    # Enough for everyone at full power to start with: 32 A x 3 phases x 230 V.
    full_kw = n_evses * 32 * 3 * 230 / 1000
    r = await http.post(
        "/sites", json={"id": "bench", "import_limit_kw": full_kw, "policy": cfg.policy}
    )
    r.raise_for_status()
    for sid in ids:
        r = await http.post("/stations", json={"id": sid, "site_id": "bench"})
        r.raise_for_status()
    url = f"ws://127.0.0.1:{rt.ocpp_port}/ocpp"
    ctx = mp.get_context("spawn")
    procs: list[tuple[Any, Any]] = []
    n_procs = max(1, min(cfg.station_procs, stations))
    t_start = time.perf_counter()
    for k in range(n_procs):
        parent, child = mp.Pipe()
        proc = ctx.Process(
            target=_stations_main,
            args=(url, ids[k::n_procs], cfg.evses_per_station, cfg.ocpp, child),
            daemon=True,
        )
        proc.start()
        procs.append((proc, parent))
    result: dict[str, Any] = {
        "benchmark": "smartcharging",
        "evses": n_evses,
        "stations": stations,
        "evses_per_station": cfg.evses_per_station,
        "station_procs": n_procs,
        "ocpp": cfg.ocpp,
        "database": "postgresql" if rt.settings.database_url.startswith("postgres") else "sqlite",
        "policy": cfg.policy,
        "cpus": os.cpu_count(),
    }
    try:
        for proc, parent in procs:
            while not parent.poll():
                await asyncio.sleep(0.1)
                if not proc.is_alive():
                    raise RuntimeError("station process died during start")
            parent.recv()
        result["setup_s"] = round(time.perf_counter() - t_start, 1)
        log(f"{stations} stations, {n_evses} EVSEs in session after {result['setup_s']} s")
        await _wait_settled(rt, "bench", n_evses, timeout)
        rounds = []
        cpu0 = _cpu_s([None, *(p.pid for p, _ in procs)])
        t_rounds = time.perf_counter()
        for i in range(cfg.rounds):
            share = 0.5 if i % 2 == 0 else 0.8
            limit_kw = round(full_kw * share, 1)
            wanted_before = {k: w.version for k, w in rt.dispatcher.all_wanted().items()}
            acks.times.clear()
            t0 = time.perf_counter()
            r = await http.patch("/sites/bench", json={"import_limit_kw": limit_kw})
            r.raise_for_status()
            t_api = time.perf_counter() - t0
            changed = await acks.wait_new(rt.dispatcher, wanted_before, timeout)
            st = rt.lm.status["bench"]
            lat = sorted(t - t0 for t in changed.values())
            rtt = sorted(t - st.planned_at for t in changed.values())
            rounds.append(
                {
                    "limit_kw": limit_kw,
                    "profiles": len(lat),
                    "ack_p50_s": percentile(lat, 50),
                    "ack_p99_s": percentile(lat, 99),
                    "ack_max_s": lat[-1] if lat else None,
                    "rtt_p50_s": percentile(rtt, 50),
                    "rtt_p99_s": percentile(rtt, 99),
                    "api_s": t_api,
                    "plan_compute_s": st.compute_s,
                    "plan_load_s": st.load_s,
                    "problems": len(st.plan.problems) if st.plan else None,
                }
            )
            log(
                f"round {i + 1}: limit {limit_kw:,.0f} kW, {len(lat)} profiles, "
                f"p50 {rounds[-1]['ack_p50_s']:.3f} s, p99 {rounds[-1]['ack_p99_s']:.3f} s, "
                f"plan {st.compute_s * 1000:.1f} ms"
            )
        cpu1 = _cpu_s([None, *(p.pid for p, _ in procs)])
        span = time.perf_counter() - t_rounds
        result["rounds"] = rounds

        def med(key: str) -> float | None:
            values = [x[key] for x in rounds if x[key] is not None]
            return round(statistics.median(values), 4) if values else None

        result.update(
            ack_p50_s=med("ack_p50_s"),
            ack_p99_s=med("ack_p99_s"),
            ack_max_s=med("ack_max_s"),
            rtt_p50_s=med("rtt_p50_s"),
            rtt_p99_s=med("rtt_p99_s"),
            plan_compute_s=med("plan_compute_s"),
            plan_load_s=med("plan_load_s"),
            target_s=target_s(n_evses),
            # CPU over the rounds (the waits between them included), % of one core
            csms_cpu_pct=round(100 * (cpu1[0] - cpu0[0]) / span, 1),
            station_cpu_pct=round(100 * (sum(cpu1[1:]) - sum(cpu0[1:])) / span, 1),
            profile_writes=rt.dispatcher.store.writes,
        )
        counters: dict[str, int] = {}
        for _, parent in procs:
            parent.send("stop")
            if await asyncio.to_thread(parent.poll, 10):
                for action, n in parent.recv()[1].items():
                    counters[action] = counters.get(action, 0) + n
        result["station_counters"] = counters
    finally:
        for proc, _ in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        await http.aclose()
        await stop_in_process_node(rt, tmp)
    return result


def target_s(evses: int) -> float:
    """p99 target of a limit change: 0.5 s up to 1,000 EVSEs, 1 s beyond (up to 5,000)."""
    return 0.5 if evses <= 1000 else 1.0


def _cpu_s(pids: list[int | None]) -> list[float]:
    """CPU seconds (user + system) of each process (None: this one)."""
    import psutil

    out = []
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out.append(t.user + t.system)
        except psutil.Error:
            out.append(0.0)
    return out


class _Acks:
    """When the CSMS received each Accepted, from the dispatcher's answers."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, int], float] = {}
        self._new = asyncio.Event()

    def on_result(self, station_id: str, profile_id: int, w) -> None:
        if w.status == "accepted":
            self.times[(station_id, profile_id)] = time.perf_counter()
            self._new.set()

    async def wait_new(self, dispatcher, before: dict, timeout: float) -> dict:
        """Until every profile changed since ``before`` is accepted: key -> its ack time.

        Woken by the answers themselves: nothing polls the CSMS meanwhile.
        """
        deadline = time.perf_counter() + timeout

        def changed_keys() -> list[tuple[str, int]]:
            return [k for k, w in dispatcher.all_wanted().items() if before.get(k) != w.version]

        changed = changed_keys()
        waiting = changed
        while True:
            waiting = [k for k in waiting if (w := dispatcher.get(*k)) and w.status != "accepted"]
            if changed and not waiting:
                return {k: self.times[k] for k in changed if k in self.times}
            left = deadline - time.perf_counter()
            if left <= 0:
                raise RuntimeError(f"{len(waiting)} new profiles were not accepted in time")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), min(left, 0.5))
            except TimeoutError:  # a quiet moment: look again at what changed
                changed = changed_keys()
                waiting = changed


async def _wait_settled(rt, site_id: str, evses: int, timeout: float) -> None:
    """Until every EVSE has an accepted TxProfile (the initial plan)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        await rt.lm.rebalance_now(site_id, timeout)
        wanted = rt.dispatcher.all_wanted()
        accepted = sum(1 for w in wanted.values() if w.status == "accepted")
        if accepted >= evses:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the initial plan was not accepted everywhere in time")


# ---------------------------------------------------------------- CLI


def render(result: dict[str, Any]):
    from rich.table import Table

    table = Table(title=f"smart charging: {result['evses']} EVSEs, limit change -> acknowledged")
    cols = ("round", "limit kW", "profiles", "ack p50 s", "ack p99 s", "ack max s")
    for col in (*cols, "rtt p50 s", "rtt p99 s", "plan ms", "load ms"):
        table.add_column(col, justify="right")

    def row(label: str, limit: str, profiles: str, r: dict[str, Any]) -> None:
        table.add_row(
            label,
            limit,
            profiles,
            *(f"{r[k]:.3f}" for k in ("ack_p50_s", "ack_p99_s", "ack_max_s")),
            *(f"{r[k]:.3f}" for k in ("rtt_p50_s", "rtt_p99_s")),
            f"{r['plan_compute_s'] * 1000:.1f}",
            f"{r['plan_load_s'] * 1000:.1f}",
        )

    for i, r in enumerate(result.get("rounds", []), 1):
        row(str(i), f"{r['limit_kw']:,.0f}", str(r["profiles"]), r)
    row("median", "", "", result)
    return table


def bench_smartcharging_command(
    evses: Annotated[int, typer.Option(help="EVSEs on the site, all in session")] = 1000,
    evses_per_station: Annotated[int, typer.Option(help="EVSEs per station")] = 2,
    rounds: Annotated[int, typer.Option(help="Limit changes to measure")] = 5,
    ocpp: Annotated[str, typer.Option(help="1.6 or 2.0.1")] = "2.0.1",
    policy: Annotated[str, typer.Option(help="equal, priority or deadline")] = "equal",
    station_procs: Annotated[int, typer.Option(help="Processes the stations run in")] = 2,
    database_url: Annotated[str | None, typer.Option(help="Default: a fresh SQLite file")] = None,
    out: Annotated[Path | None, typer.Option(help="JSON result file")] = None,
) -> None:
    """Site limit change -> every station acknowledged its new profile (p50/p99)."""
    from rich.console import Console

    if ocpp not in ("1.6", "2.0.1"):
        raise typer.BadParameter("--ocpp must be 1.6 or 2.0.1")
    console = Console()
    if station_procs < 1:
        raise typer.BadParameter("--station-procs must be at least 1")
    cfg = SmartBenchConfig(
        evses, evses_per_station, rounds, ocpp, database_url, policy, station_procs
    )
    result = asyncio.run(run_smartcharging_bench(cfg, log=console.print))
    console.print(render(result))
    goal = result["target_s"]
    met = result["ack_p99_s"] is not None and result["ack_p99_s"] <= goal
    console.print(
        f"target: AC limits applied within {goal:g} s (p99) — {'met' if met else 'NOT met'}"
    )
    console.print(
        f"CPU during the rounds: CSMS {result['csms_cpu_pct']} %, "
        f"stations {result['station_cpu_pct']} % of one core ({result['cpus']} cores)"
    )
    out = out or stamped_path(f"smartcharging-{result['evses']}")
    write_json(out, result)
    console.print(f"wrote {out}")
