"""OCPP 2.1 on the wire: framing, the ``ocpp`` 2.1.0 library defects we work around,
and V2X charging profiles (validation and wire form)."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
import websockets
from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case

from evflex.csms import rpc
from evflex.smartcharging import profiles as pf
from evflex.smartcharging.composite import InstalledProfile, v2x_control
from evflex.smartcharging.v2x import LoadBalancing, Measurements, freq_watt, target_power_w

BOOT21 = (
    '[2,"b","BootNotification",{"chargingStation":{"model":"M","vendorName":"V"},'
    '"reason":"PowerUp"}]'
)


async def rpc_call(ws, frame: str) -> list:
    await ws.send(frame)
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


# --------------------------------------------------------------------- library defects


def test_library_miscases_per_phase_keys_and_fix_phase_keys_restores_them():
    wire = {"startPeriod": 0, "setpoint": -3000.0, "setpoint_L2": -2000.0, "setpoint_L3": -1000.0,
            "dischargeLimit_L2": -16.0, "limit_L3": 10.0, "setpointReactive_L2": 5.0}
    through_library = snake_to_camel_case(camel_to_snake_case(wire))
    assert "setpointL2" in through_library and "setpoint_L2" not in through_library  # the defect
    assert rpc.fix_phase_keys(through_library) == wire
    nested = {"chargingSchedule": [{"chargingSchedulePeriod": [through_library]}]}
    assert rpc.fix_phase_keys(nested)["chargingSchedule"][0]["chargingSchedulePeriod"][0] == wire
    # keys that merely end in L<n> but are not per-phase keys are left alone
    assert rpc.fix_phase_keys({"evseL2": 1, "limit": 2}) == {"evseL2": 1, "limit": 2}
    assert {"maxDischargePower_L2", "minChargePower_L3", "limit_L2"} <= rpc.phase_keys()


def test_send_and_callresulterror_frames_exist_only_in_21():
    frame = rpc.parse_frame('[6,"s1","NotifyPeriodicEventStream",{}]', "2.1")
    assert (frame.type_id, frame.action) == (rpc.SEND, "NotifyPeriodicEventStream")
    frame = rpc.parse_frame('[5,"r1","FormatViolation","bad",{}]', "2.1")
    assert (frame.type_id, frame.error_code) == (rpc.CALLRESULTERROR, "FormatViolation")
    for raw in ('[6,"s1","NotifyPeriodicEventStream",{}]', '[5,"r1","X","y",{}]'):
        with pytest.raises(rpc.RpcError) as info:
            rpc.parse_frame(raw, "2.0.1")
        assert info.value.code == "MessageTypeNotSupported"


# --------------------------------------------------------------------- over the wire


async def test_21_station_boots_and_bad_frames_get_the_right_answers(node):
    async with websockets.connect(node.url("V21A"), subprotocols=["ocpp2.1"]) as ws:
        assert ws.subprotocol == "ocpp2.1"
        answer = await rpc_call(ws, BOOT21)
        assert answer[0] == 3 and answer[2]["status"] == "Accepted"
        # unknown action: NotImplemented (the ocpp library would send nothing at all)
        answer = await rpc_call(ws, '[2,"u1","NoSuchAction",{}]')
        assert answer[:3] == [4, "u1", "NotImplemented"]
        # a 2.1 action a CSMS never receives: NotSupported
        answer = await rpc_call(ws, '[2,"u2","RequestStartTransaction",{"idToken":'
                                    '{"idToken":"a","type":"Central"},"remoteStartId":1}]')
        assert answer[:3] == [4, "u2", "NotSupported"]
        # per-phase keys are valid 2.1 and pass validation; mis-cased ones do not
        answer = await rpc_call(ws, '[2,"u3","NotifyEVChargingNeeds",{"evseId":1,'
                                    '"chargingNeeds":{"requestedEnergyTransfer":"AC_BPT",'
                                    '"v2xChargingParameters":{"maxChargePower":11000,'
                                    '"maxChargePower_L2":3000,"maxDischargePower":7000}}}]')
        assert answer[0] == 3, answer
        answer = await rpc_call(ws, '[2,"u4","NotifyEVChargingNeeds",{"evseId":1,'
                                    '"chargingNeeds":{"requestedEnergyTransfer":"AC_BPT",'
                                    '"v2xChargingParameters":{"maxChargePowerL2":3000}}}]')
        assert answer[:3] == [4, "u4", "FormatViolation"]
        # SEND gets no answer; CALLRESULTERROR gets no answer; the connection lives on
        await ws.send('[6,"s1","NotifyPeriodicEventStream",{"id":7,"pending":0,'
                      '"basetime":"2026-01-01T00:00:00Z","data":[{"t":0,"v":"50.01"}]}]')
        await ws.send('[5,"nope","FormatViolation","your answer was wrong",{}]')
        await ws.send('[6,"s2","Heartbeat",{}]')  # Heartbeat is not a SEND message
        answer = await rpc_call(ws, '[2,"hb","Heartbeat",{}]')
        assert answer[:2] == [3, "hb"]  # the next frame on the socket is this answer
    events = (await node.http.get("/api/v1/events", params={"station_id": "V21A"})).json()
    streams = [e for e in events if e["kind"] == "stream"]
    assert streams and streams[0]["detail"]["data"] == [{"t": 0.0, "v": "50.01"}]


async def test_21_callresult_that_breaks_the_schema_gets_a_callresulterror(node):
    async with websockets.connect(node.url("V21B"), subprotocols=["ocpp2.1"]) as ws:
        await rpc_call(ws, BOOT21)
        task = asyncio.create_task(
            node.http.post("/api/v1/stations/V21B/commands/reset", json={"type": "soft"})
        )
        call = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert call[2] == "Reset"
        await ws.send(json.dumps([3, call[1], {"status": "Sure"}]))
        complaint = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert complaint[:3] == [5, call[1], "PropertyConstraintViolation"]
        await task


# --------------------------------------------------------------------- profiles


def _v2x_profile(**period) -> dict:
    return {
        "id": 11, "stackLevel": 1, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": [{
            "id": 1, "startSchedule": "2026-01-01T00:00:00Z", "chargingRateUnit": "W",
            "chargingSchedulePeriod": [{"startPeriod": 0, **period}],
        }],
    }


def test_v2x_profile_round_trips_and_validates_against_the_21_schema():
    raw = _v2x_profile(operationMode="CentralSetpoint", setpoint=-3000.0, setpoint_L2=-3000.0,
                       setpoint_L3=-3000.0, dischargeLimit=-4000.0, dischargeLimit_L2=-4000.0,
                       dischargeLimit_L3=-4000.0, setpointReactive=100.0)
    profile = pf.checked(raw, 1, "2.1")
    period = profile.schedule.periods[0]
    assert math.isinf(period.limit)
    assert period.total("setpoint") == -9000.0 and period.mode is pf.OperationMode.CENTRAL_SETPOINT
    wire = pf.to_wire(profile, "2.1")
    assert wire["chargingSchedule"][0]["chargingSchedulePeriod"][0] == raw["chargingSchedule"][0][
        "chargingSchedulePeriod"][0]
    rpc.validate(rpc.CALL, "SetChargingProfile", {"evseId": 1, "chargingProfile": wire}, "2.1")
    with pytest.raises(rpc.RpcError):  # the same profile is not 2.0.1
        rpc.validate(rpc.CALL, "SetChargingProfile", {"evseId": 1, "chargingProfile": wire},
                     "2.0.1")


@pytest.mark.parametrize(
    "period,version,reason",
    [
        ({"limit": 16, "operationMode": "ChargingOnly"}, "2.0.1", "OCPP 2.1"),
        ({"operationMode": "CentralSetpoint"}, "2.1", "needs a setpoint"),
        ({"operationMode": "ChargingOnly"}, "2.1", "needs a limit"),
        ({"operationMode": "LocalFrequency"}, "2.1", "v2xFreqWattCurve"),
        ({"operationMode": "CentralSetpoint", "setpoint": 100, "dischargeLimit": 5}, "2.1",
         "zero or negative"),
        ({"operationMode": "ChargingOnly", "limit": 10, "dischargeLimit": -5}, "2.1",
         "cannot discharge"),
        ({"operationMode": "CentralSetpoint", "setpoint": 9000, "limit": 5000}, "2.1",
         "above the period's limit"),
        ({"operationMode": "CentralSetpoint", "setpoint": -9000, "dischargeLimit": -5000},
         "2.1", "below the period's dischargeLimit"),
        ({"operationMode": "LocalFrequency", "v2xFreqWattCurve": [
            {"frequency": 50.1, "power": 0}, {"frequency": 49.9, "power": 1}]}, "2.1",
         "strictly increasing"),
        ({"operationMode": "CentralSetpoint", "setpoint": 1, "setpoint_L2": 1}, "2.1",
         "come together"),
    ],
)
def test_v2x_profile_rules(period, version, reason):
    with pytest.raises(pf.ProfileError, match=reason):
        pf.checked(_v2x_profile(**period), 1, version)


def test_priority_and_local_generation_purposes_are_21_only():
    raw = _v2x_profile(limit=32)
    raw["chargingProfilePurpose"] = "PriorityCharging"
    pf.checked(raw, 1, "2.1")
    with pytest.raises(pf.ProfileError, match="only in OCPP 2.1"):
        pf.checked(raw, 1, "2.0.1")


# --------------------------------------------------------------------- mode semantics


def test_freq_watt_interpolates_linearly_and_is_flat_beyond_the_ends():
    curve = [(49.8, -10000.0), (50.0, 0.0), (50.2, 10000.0)]
    assert freq_watt(curve, 49.9) == pytest.approx(-5000.0)
    assert freq_watt(curve, 50.05) == pytest.approx(2500.0)
    assert freq_watt(curve, 49.0) == -10000.0 and freq_watt(curve, 51.0) == 10000.0


def _control(period: dict, at="2026-01-01T00:10:00Z", purpose="TxDefaultProfile", extra=()):
    raw = _v2x_profile(**period)
    raw["chargingProfilePurpose"] = purpose
    items = [InstalledProfile(1, pf.checked(raw, 1, "2.1")), *extra]
    from evflex.clock import parse_datetime

    return v2x_control(items, 1, parse_datetime(at), voltage=230, phases=3, max_current_a=32)


def test_target_power_in_each_mode():
    ev = {"phases": 3, "voltage": 230.0, "ev_max_charge_w": 11000.0, "ev_max_discharge_w": 7000.0}
    assert target_power_w(_control({"operationMode": "ChargingOnly", "limit": 8000}), **ev) == 8000
    assert target_power_w(_control({"operationMode": "Idle", "limit": 0, "evseSleep": True}),
                          **ev) == 0
    central = _control({"operationMode": "CentralSetpoint", "setpoint": -9000})
    assert target_power_w(central, **ev) == -7000  # the EV gives at most 7 kW
    central = _control({"operationMode": "CentralSetpoint", "setpoint": 4000})
    assert target_power_w(central, **ev) == 4000  # charging in the same mode
    ext = _control({"operationMode": "ExternalSetpoint", "dischargeLimit": -2000, "limit": 5000})
    assert target_power_w(ext, external_setpoint_w=-6000, **ev) == -2000  # CSMS bounds the EMS
    assert target_power_w(ext, external_setpoint_w=9000, **ev) == 5000
    lim = _control({"operationMode": "ExternalLimits", "limit": 10000})
    assert target_power_w(lim, external_limits_w=(4000, 0), **ev) == 4000
    local = _control({"operationMode": "LocalFrequency", "v2xBaseline": 1000,
                      "v2xFreqWattCurve": [{"frequency": 49.8, "power": -6000},
                                           {"frequency": 50.2, "power": 6000}]})
    assert target_power_w(local, measured=Measurements(frequency_hz=49.9), **ev) == pytest.approx(
        1000 - 3000)
    llb = _control({"operationMode": "LocalLoadBalancing"})
    band = LoadBalancing(upper_w=10000, lower_w=0, upper_offset_w=500, lower_offset_w=200)
    # building draws 14 kW: the EV discharges 4.5 kW to bring the connection to 9.5 kW
    assert target_power_w(llb, measured=Measurements(building_w=14000), balancing=band,
                          **ev) == pytest.approx(-4500)
    # PV exports 3 kW: the EV takes 3.2 kW
    assert target_power_w(llb, measured=Measurements(building_w=-3000), balancing=band,
                          **ev) == pytest.approx(3200)
    # inside the band: it holds what it does
    assert target_power_w(llb, measured=Measurements(building_w=5000), balancing=band,
                          current_w=1500, **ev) == 1500


def test_discharge_limit_of_a_station_max_profile_bounds_every_mode():
    cap = pf.checked(
        {**_v2x_profile(limit=50000, dischargeLimit=-3000),
         "chargingProfilePurpose": "ChargingStationMaxProfile", "id": 2}, 0, "2.1")
    ctrl = _control({"operationMode": "CentralSetpoint", "setpoint": -9000},
                    extra=[InstalledProfile(0, cap)])
    assert ctrl.discharge_limit_w == 3000
    assert target_power_w(ctrl, phases=3, voltage=230, ev_max_charge_w=11000,
                          ev_max_discharge_w=11000) == -3000
    charge_only = _control({"operationMode": "ChargingOnly", "limit": 16000})
    assert charge_only.discharge_limit_w == 0
