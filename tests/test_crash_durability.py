"""A server killed with SIGKILL while 100 stations talk to it loses no answered message.

The CSMS answers a message only after its data is committed. This test holds
it to that: ``evflex serve`` runs as a child process, 50 OCPP 1.6 and 50
OCPP 2.0.1 stations start a transaction each and send meter values as fast
as they are answered, and the server is killed without warning in the middle
of it. After a restart on the same database, every transaction and every
meter sample whose message was answered must be stored, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import websockets
from sqlalchemy import select

from evflex.store.db import make_engine
from evflex.store.tables import MeterValue, Transaction

STATIONS = 100
REGISTER = "Energy.Active.Import.Register"
BASE = datetime(2026, 1, 1, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(database_url: str, ocpp_port: int, http_port: int, log) -> subprocess.Popen:
    code = "import sys; from evflex.cli import app; sys.argv[0] = 'evflex'; app()"
    args = [
        sys.executable, "-c", code, "serve",
        "--host", "127.0.0.1",
        "--ocpp-port", str(ocpp_port),
        "--http-port", str(http_port),
        "--database-url", database_url,
        "--allow-unknown-stations",
        "--log-level", "warning",
    ]  # fmt: skip
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


async def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        assert proc.poll() is None, "the server exited"
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        assert asyncio.get_running_loop().time() < deadline, "the server did not start"
        await asyncio.sleep(0.1)


class Answered:
    """What the stations were told was stored."""

    def __init__(self) -> None:
        self.transactions: set[tuple[str, str]] = set()  # (station, transaction id)
        self.samples: dict[tuple[str, datetime], float] = {}  # (station, stamp) -> Wh


def _stamp(seq: int) -> datetime:
    return BASE + timedelta(milliseconds=seq)


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _station(url: str, sid: str, version: str, answered: Answered, started) -> None:
    ids = (str(i) for i in itertools.count())
    try:
        async with websockets.connect(
            f"{url}/{sid}", subprotocols=[f"ocpp{version}"], open_timeout=30
        ) as ws:

            async def call(action: str, payload: dict) -> dict:
                mid = next(ids)
                await ws.send(orjson.dumps([2, mid, action, payload]).decode())
                while True:
                    frame = orjson.loads(await ws.recv())
                    if frame[1] == mid:
                        assert frame[0] == 3, frame
                        return frame[2]

            if version == "1.6":
                await call("BootNotification", {"chargePointVendor": "T", "chargePointModel": "K"})
                res = await call(
                    "StartTransaction",
                    {"connectorId": 1, "idTag": "KILL", "meterStart": 0, "timestamp": _iso(BASE)},
                )
                tx_id = str(res["transactionId"])
            else:
                await call(
                    "BootNotification",
                    {"reason": "PowerUp", "chargingStation": {"vendorName": "T", "model": "K"}},
                )
                tx_id = uuid.uuid4().hex
                await call(
                    "TransactionEvent",
                    {
                        "eventType": "Started",
                        "timestamp": _iso(BASE),
                        "triggerReason": "CablePluggedIn",
                        "seqNo": 0,
                        "transactionInfo": {"transactionId": tx_id},
                        "evse": {"id": 1, "connectorId": 1},
                    },
                )
            answered.transactions.add((sid, tx_id))
            started.release()
            for seq in itertools.count(1):
                ts = _stamp(seq)
                wh = float(seq * 10)
                sample = {"value": f"{wh:.0f}" if version == "1.6" else wh, "measurand": REGISTER}
                if version == "1.6":
                    await call(
                        "MeterValues",
                        {
                            "connectorId": 1,
                            "transactionId": int(tx_id),
                            "meterValue": [{"timestamp": _iso(ts), "sampledValue": [sample]}],
                        },
                    )
                else:
                    await call(
                        "TransactionEvent",
                        {
                            "eventType": "Updated",
                            "timestamp": _iso(ts),
                            "triggerReason": "MeterValuePeriodic",
                            "seqNo": seq,
                            "transactionInfo": {"transactionId": tx_id},
                            "meterValue": [{"timestamp": _iso(ts), "sampledValue": [sample]}],
                        },
                    )
                answered.samples[(sid, ts)] = wh
    except (websockets.ConnectionClosed, OSError):
        return  # the server was killed


async def _stored(database_url: str) -> tuple[set, dict]:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            txs = {
                (r.station_id, r.transaction_id)
                for r in await conn.execute(
                    select(Transaction.station_id, Transaction.transaction_id)
                )
            }
            rows = (
                await conn.execute(
                    select(MeterValue.station_id, MeterValue.timestamp, MeterValue.value).where(
                        MeterValue.measurand == REGISTER, MeterValue.timestamp > BASE
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    samples: dict = {}
    for r in rows:
        key = (r.station_id, r.timestamp.astimezone(UTC))
        assert key not in samples, f"sample stored twice: {key}"
        samples[key] = r.value
    return txs, samples


async def test_sigkill_loses_no_answered_message(database_url, tmp_path):
    ocpp_port, http_port = _free_port(), _free_port()
    log = (tmp_path / "server.log").open("ab")  # noqa: ASYNC230 - the child's log, closed below
    proc = _start_server(database_url, ocpp_port, http_port, log)
    answered = Answered()
    try:
        await _wait_listening(ocpp_port, proc)
        url = f"ws://127.0.0.1:{ocpp_port}/ocpp"
        started = asyncio.Semaphore(0)
        tasks = [
            asyncio.create_task(
                _station(url, f"K{i:03d}", "1.6" if i % 2 else "2.0.1", answered, started)
            )
            for i in range(STATIONS)
        ]
        for _ in range(STATIONS):  # every station is in a transaction
            await asyncio.wait_for(started.acquire(), 60)
        while len(answered.samples) < 20 * STATIONS:  # noqa: ASYNC110 - and all are sending
            await asyncio.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert len(answered.transactions) == STATIONS

        proc = _start_server(database_url, ocpp_port, http_port, log)  # a restart
        await _wait_listening(ocpp_port, proc)
        txs, samples = await _stored(database_url)
        assert answered.transactions <= txs, answered.transactions - txs
        lost = {k: v for k, v in answered.samples.items() if samples.get(k) != v}
        assert not lost, f"{len(lost)} answered samples not stored, e.g. {next(iter(lost))}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
