"""``evflex bench smartcharging``: how fast a site limit change reaches every EVSE.

One evflex node (in this process, on a fresh SQLite file unless told
otherwise) and a second process of plain WebSocket stations: S stations
with E EVSEs each, every EVSE in a charging session, all on one site. The
stations answer SetChargingProfile at once with Accepted. The site's import
limit is then changed R times (down and up in turn) through
``PATCH /api/v1/sites/{id}``; for each change we measure, per EVSE, the
time from the request to the CSMS receiving the station's Accepted for the
new profile, and the planner's compute time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing as mp
import os
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from evflex.bench.ocpp import percentile


@dataclass
class SmartBenchConfig:
    evses: int = 1000
    evses_per_station: int = 2
    rounds: int = 5
    ocpp: str = "2.0.1"
    database_url: str | None = None
    policy: str = "equal"


# ---------------------------------------------------------------- stations


async def _station(url: str, sid: str, evses: int, version: str, ready, counters) -> None:
    import websockets

    ids = itertools.count(1)
    sub = "ocpp" + version
    async with websockets.connect(f"{url}/{sid}", subprotocols=[sub], open_timeout=60) as ws:

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
        async for raw in ws:
            msg = json.loads(raw)
            if msg[0] == 2:
                await _answer(ws, msg, counters)


async def _answer(ws, msg: list, counters: dict) -> None:
    action = msg[2]
    counters[action] = counters.get(action, 0) + 1
    if action == "SetChargingProfile":
        await ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
    else:
        await ws.send(json.dumps([4, msg[1], "NotImplemented", f"bench: no {action}", {}]))


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
        while True:
            await asyncio.sleep(0.5)
            if conn.poll():
                conn.recv()
                break
        conn.send(("counters", counters))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


# ---------------------------------------------------------------- the run


async def run_smartcharging_bench(cfg: SmartBenchConfig, log=print) -> dict[str, Any]:
    from evflex.bench.server import api_client, in_process_node

    stations = max(1, cfg.evses // cfg.evses_per_station)
    n_evses = stations * cfg.evses_per_station
    rt, tmp = await in_process_node(cfg.database_url, "evflex-bench-", allow_unknown_stations=False)
    acks: dict[tuple[str, int], float] = {}

    def on_result(station_id: str, profile_id: int, w) -> None:
        if w.status == "accepted":
            acks[(station_id, profile_id)] = time.perf_counter()

    rt.dispatcher.on_result(on_result)
    http = api_client(rt, 120)
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
    parent, child = mp.Pipe()
    ctx = mp.get_context("spawn")
    proc = ctx.Process(
        target=_stations_main,
        args=(f"ws://127.0.0.1:{rt.ocpp_port}/ocpp", ids, cfg.evses_per_station, cfg.ocpp, child),
        daemon=True,
    )
    t_start = time.perf_counter()
    proc.start()
    result: dict[str, Any] = {
        "benchmark": "smartcharging",
        "evses": n_evses,
        "stations": stations,
        "evses_per_station": cfg.evses_per_station,
        "ocpp": cfg.ocpp,
        "database": "postgresql" if rt.settings.database_url.startswith("postgres") else "sqlite",
        "policy": cfg.policy,
        "cpus": os.cpu_count(),
    }
    try:
        while not parent.poll():
            await asyncio.sleep(0.1)
            if not proc.is_alive():
                raise RuntimeError("station process died during start")
        parent.recv()
        result["setup_s"] = round(time.perf_counter() - t_start, 1)
        log(f"{stations} stations, {n_evses} EVSEs in session after {result['setup_s']} s")
        await _wait_settled(rt, "bench", n_evses, 120)
        rounds = []
        for i in range(cfg.rounds):
            share = 0.5 if i % 2 == 0 else 0.8
            limit_kw = round(full_kw * share, 1)
            wanted_before = {k: w.version for k, w in rt.dispatcher.all_wanted().items()}
            acks.clear()
            t0 = time.perf_counter()
            r = await http.patch("/sites/bench", json={"import_limit_kw": limit_kw})
            r.raise_for_status()
            t_api = time.perf_counter() - t0
            changed = await _wait_new_acks(rt, wanted_before, acks, 120)
            lat = sorted(t - t0 for t in changed.values())
            st = rt.lm.status["bench"]
            rounds.append(
                {
                    "limit_kw": limit_kw,
                    "profiles": len(lat),
                    "ack_p50_s": percentile(lat, 50),
                    "ack_p99_s": percentile(lat, 99),
                    "ack_max_s": lat[-1] if lat else None,
                    "api_s": t_api,
                    "plan_compute_s": st.compute_s,
                    "plan_load_s": st.load_s,
                    "problems": len(st.plan.problems) if st.plan else None,
                }
            )
            log(
                f"round {i + 1}: limit {limit_kw:,.0f} kW, {len(lat)} profiles, "
                f"p50 {rounds[-1]['ack_p50_s']:.3f} s, p99 {rounds[-1]['ack_p99_s']:.3f} s"
            )
        result["rounds"] = rounds

        def med(key: str) -> float | None:
            values = [x[key] for x in rounds if x[key] is not None]
            return round(statistics.median(values), 4) if values else None

        result.update(
            ack_p50_s=med("ack_p50_s"),
            ack_p99_s=med("ack_p99_s"),
            ack_max_s=med("ack_max_s"),
            plan_compute_s=med("plan_compute_s"),
            plan_load_s=med("plan_load_s"),
            target_s=1.0,
        )
        parent.send("stop")
        if await asyncio.to_thread(parent.poll, 10):
            result["station_counters"] = parent.recv()[1]
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
        await http.aclose()
        await rt.stop()
        tmp.cleanup()
    return result


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


async def _wait_new_acks(rt, before: dict, acks: dict, timeout: float) -> dict:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        changed = {
            k: w for k, w in rt.dispatcher.all_wanted().items() if before.get(k) != w.version
        }
        if changed and all(w.status == "accepted" for w in changed.values()):
            await asyncio.sleep(0)
            return {k: acks[k] for k in changed if k in acks}
        await asyncio.sleep(0.005)
    raise RuntimeError("new profiles were not all accepted in time")


# ---------------------------------------------------------------- CLI


def render(result: dict[str, Any]):
    from rich.table import Table

    table = Table(title=f"smart charging: {result['evses']} EVSEs, limit change -> acknowledged")
    for col in ("round", "limit kW", "profiles", "ack p50 s", "ack p99 s", "ack max s", "plan ms"):
        table.add_column(col, justify="right")
    for i, r in enumerate(result.get("rounds", []), 1):
        table.add_row(
            str(i),
            f"{r['limit_kw']:,.0f}",
            str(r["profiles"]),
            f"{r['ack_p50_s']:.3f}",
            f"{r['ack_p99_s']:.3f}",
            f"{r['ack_max_s']:.3f}",
            f"{r['plan_compute_s'] * 1000:.1f}",
        )
    table.add_row(
        "median",
        "",
        "",
        f"{result['ack_p50_s']:.3f}",
        f"{result['ack_p99_s']:.3f}",
        f"{result['ack_max_s']:.3f}",
        f"{result['plan_compute_s'] * 1000:.1f}",
    )
    return table


def bench_smartcharging_command(
    evses: Annotated[int, typer.Option(help="EVSEs on the site, all in session")] = 1000,
    evses_per_station: Annotated[int, typer.Option(help="EVSEs per station")] = 2,
    rounds: Annotated[int, typer.Option(help="Limit changes to measure")] = 5,
    ocpp: Annotated[str, typer.Option(help="1.6 or 2.0.1")] = "2.0.1",
    policy: Annotated[str, typer.Option(help="equal, priority or deadline")] = "equal",
    database_url: Annotated[str | None, typer.Option(help="Default: a fresh SQLite file")] = None,
    out: Annotated[Path | None, typer.Option(help="JSON result file")] = None,
) -> None:
    """Site limit change -> every station acknowledged its new profile (p50/p99)."""
    from rich.console import Console

    if ocpp not in ("1.6", "2.0.1"):
        raise typer.BadParameter("--ocpp must be 1.6 or 2.0.1")
    console = Console()
    cfg = SmartBenchConfig(evses, evses_per_station, rounds, ocpp, database_url, policy)
    result = asyncio.run(run_smartcharging_bench(cfg, log=console.print))
    console.print(render(result))
    target = "met" if result["ack_p99_s"] is not None and result["ack_p99_s"] <= 1.0 else "NOT met"
    console.print(f"target: AC limits applied within 1 s (p99) — {target}")
    if out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = Path("bench-results") / f"smartcharging-{result['evses']}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")
