"""One table says what each command means; the adapters build only what differs."""

from datetime import UTC, datetime

import pytest

from evflex.csms import commands, v16, v21, v201
from evflex.csms.rpc import CALL, validate
from evflex.csms.server import OcppServer

ADAPTERS = {"1.6": (v16.BUILDERS,), "2.0.1": (v201.BUILDERS,), "2.1": (v21.BUILDERS, v201.BUILDERS)}

SAMPLES = {
    "reset": commands.ResetBody(type="hard"),
    "cancel-reservation": commands.CancelReservationBody(reservation_id=7),
    "get-local-list-version": commands.EmptyBody(),
    "clear-cache": commands.EmptyBody(),
    "remote-stop": commands.RemoteStopBody(transaction_id="42"),
    "reserve-now": commands.ReserveNowBody(
        id_token="CARD1", expiry=datetime(2030, 1, 1, tzinfo=UTC), evse=1, reservation_id=3
    ),
    "set-charging-profile": commands.SetChargingProfileBody(
        evse=1,
        profile={
            "id": 5,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": [
                {
                    "id": 1,
                    "chargingRateUnit": "A",
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}],
                }
            ],
        },
    ),  # fmt: skip
}


def test_every_command_resolves_in_every_version_that_has_it():
    for name, command in commands.COMMANDS.items():
        for version in ("1.6", "2.0.1", "2.1"):
            assert OcppServer.has_command(version, name) == (version in command.versions)
            if version in command.versions:
                assert callable(commands.builder(name, version, ADAPTERS[version]))
            else:
                with pytest.raises(commands.CommandNotAvailable, match=f"OCPP {version}"):
                    commands.builder(name, version, ADAPTERS[version])


def test_an_adapter_builds_only_commands_its_version_has():
    for version, tables in ADAPTERS.items():
        for name in tables[0]:
            assert version in commands.COMMANDS[name].versions, (version, name)


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
@pytest.mark.parametrize("name", sorted(SAMPLES))
async def test_built_messages_are_valid_for_the_version(version, name):
    """Shared and per-version builders both give a message the version's schema accepts."""
    build = commands.builder(name, version, ADAPTERS[version])
    action, payload = await build(SAMPLES[name], None)
    validate(CALL, action, payload, version)  # raises RpcError on a schema violation
    if name == "set-charging-profile":
        key = "csChargingProfiles" if version == "1.6" else "chargingProfile"
        assert payload[key]["chargingSchedule"] is not None
