"""What CPO partners sent our eMSP role, for the operator: the API and the CLI."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from typer.testing import CliRunner

from conftest import running_node
from evflex.cli import app as cli_app
from evflex.store.ocpi_tables import OcpiObject
from ocpi.partner import RecordingPartner


async def test_received_sessions_and_cdrs_are_listed_for_operators_only(tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    cpo = await RecordingPartner([("sessions", "SENDER")], role="CPO", party_id="CPA").start()
    try:
        async with running_node(db) as node:
            pid = await cpo.link(node)
            now = node.rt.clock.now()
            cdr = {"id": "7", "cdr_token": {"uid": "CARD-B1"}, "start_date_time": "2026-12-07T10:00:00Z",
                   "total_energy": 12.5, "evflex_total_energy_export": 1.25,
                   "total_cost": {"excl_vat": 3.1}, "currency": "EUR"}  # fmt: skip

            async def job(s):
                for i, (module, oid, data) in enumerate(
                    [
                        ("cdrs", "7", cdr),
                        ("sessions", "5", {"id": "5", "kwh": 2.0}),
                        ("cdrs", "8", {**cdr, "id": "8"}),
                    ]  # fmt: skip
                ):
                    s.add(OcpiObject(partner_id=pid, module=module, country_code="DE",
                                     party_id="CPA", object_id=oid, data=data,
                                     last_updated=now + timedelta(seconds=i)))  # fmt: skip

            await node.rt.writer.submit(job)
            r = await node.http.get("/api/v1/ocpi/received/cdrs", params={"limit": 1})
            assert r.status_code == 200, r.text
            assert r.headers["X-Total-Count"] == "2"
            [latest] = r.json()
            assert latest["object_id"] == "8" and latest["data"]["total_energy"] == 12.5
            assert latest["partner_id"] == pid and latest["party_id"] == "CPA"
            r = await node.http.get("/api/v1/ocpi/received/sessions")
            assert [o["object_id"] for o in r.json()] == ["5"]
            r = await node.http.get("/api/v1/ocpi/received/invoices")
            assert r.status_code == 422
            viewer = {"Authorization": f"Bearer {node.rt.auth.ephemeral_token('viewer')}"}
            r = await node.http.get("/api/v1/ocpi/received/cdrs", headers=viewer)
            assert r.status_code == 403  # the driver's card is in them

            args = ["ocpi", "received", "cdrs", "--database-url", db]
            done = await asyncio.to_thread(CliRunner().invoke, cli_app, args)
            assert done.exit_code == 0, done.output
            assert "CARD-B1" in done.output and "12.500" in done.output
            assert "1.250" in done.output and "3.1 EUR" in done.output
            bad = await asyncio.to_thread(CliRunner().invoke, cli_app, ["ocpi", "received", "x"])
            assert bad.exit_code == 2
    finally:
        await cpo.stop()
