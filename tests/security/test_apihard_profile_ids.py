"""A charging profile whose ids or stack level do not fit in 32 bits (what stations and
the store hold) is refused with its reason and not kept for sending."""

from __future__ import annotations

from conftest import Node


async def test_a_charging_profile_with_ids_beyond_32_bits_is_refused_and_not_kept(node: Node):
    r = await node.http.post("/api/v1/stations", json={"id": "CP-1"})
    assert r.status_code == 201, r.text
    period = {"startPeriod": 0, "limit": 16}
    for field, where in (("id", "profile"), ("stackLevel", "profile"), ("id", "schedule")):
        schedule = {"id": 1, "chargingRateUnit": "A", "chargingSchedulePeriod": [period]}
        profile = {"id": 7, "stackLevel": 1, "chargingProfilePurpose": "TxDefaultProfile",
                   "chargingProfileKind": "Relative", "chargingSchedule": [schedule]}  # fmt: skip
        (profile if where == "profile" else schedule)[field] = 2**40
        r = await node.http.put(
            "/api/v1/stations/CP-1/charging-profiles?wait=0",
            json={"evse_id": 1, "profile": profile},
        )
        assert r.status_code == 422 and "does not fit in 32 bits" in r.text, r.text
    r = await node.http.get("/api/v1/stations/CP-1/charging-profiles")
    assert r.status_code == 200 and r.json() == []
