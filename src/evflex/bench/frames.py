"""OCPP payloads of a simulated charging station, for the load generator.

A :class:`StationModel` holds what a station needs to say plausible, valid
things: its meter register, the running transaction, the sequence number and
a per-station clock whose timestamps strictly increase (millisecond steps),
so that the store's de-duplication of repeated meter readings never swallows
a fresh one. Every method returns ``(action, payload)`` ready to be framed as
``[2, id, action, payload]``; the payloads follow the OCPP 1.6 and 2.0.1 JSON
schemas (checked by the tests against the same validators the CSMS uses).
"""

from __future__ import annotations

import random
import time
import uuid

V16 = "1.6"
V201 = "2.0.1"
SUBPROTOCOL = {V16: "ocpp1.6", V201: "ocpp2.0.1"}

VENDOR = "evflex-bench"
ID_TOKEN_COUNT = 50


def id_token(n: int) -> str:
    """The n-th token of the benchmark's RFID card pool (1.6 allows 20 characters)."""
    return f"BENCH{n % ID_TOKEN_COUNT:04d}"


def _iso_ms(ms: int) -> str:
    secs, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:03d}Z"


class StationModel:
    """One simulated station: identity, protocol version, meter and transaction state."""

    __slots__ = (
        "station_id",
        "version",
        "rng",
        "energy_wh",
        "power_w",
        "soc",
        "tx_id",
        "tx_token",
        "seq_no",
        "_last_ms",
    )

    def __init__(self, station_id: str, version: str, rng: random.Random) -> None:
        if version not in SUBPROTOCOL:
            raise ValueError(f"unknown OCPP version {version!r}")
        self.station_id = station_id
        self.version = version
        self.rng = rng
        self.energy_wh = rng.uniform(0.0, 2_000_000.0)  # lifetime register of the meter
        self.power_w = 0.0
        self.soc = 0.0
        self.tx_id: str | int | None = None
        self.tx_token = ""
        self.seq_no = 0
        self._last_ms = 0

    @property
    def subprotocol(self) -> str:
        return SUBPROTOCOL[self.version]

    @property
    def in_transaction(self) -> bool:
        return self.tx_id is not None

    def timestamp(self) -> str:
        """Wall-clock time, but strictly increasing per station (at least 1 ms apart)."""
        ms = max(int(time.time() * 1000), self._last_ms + 1)
        self._last_ms = ms
        return _iso_ms(ms)

    # ------------------------------------------------------------ station life

    def boot(self) -> tuple[str, dict]:
        serial = self.station_id[-25:]
        if self.version == V16:
            return "BootNotification", {
                "chargePointVendor": VENDOR,
                "chargePointModel": "Bench AC22",
                "chargePointSerialNumber": serial,
                "firmwareVersion": "1.6.0-bench",
            }
        return "BootNotification", {
            "reason": "PowerUp",
            "chargingStation": {
                "vendorName": VENDOR,
                "model": "Bench DC50",
                "serialNumber": serial,
                "firmwareVersion": "2.0.1-bench",
            },
        }

    def initial_status(self) -> list[tuple[str, dict]]:
        """StatusNotification for every connector after boot."""
        if self.version == V16:
            return [self.status(c, "Available") for c in (0, 1, 2)]
        return [self.status(evse, "Available") for evse in (1, 2)]

    def status(self, evse: int, status: str) -> tuple[str, dict]:
        """``status`` in 1.6 terms; 2.0.1 maps Charging to Occupied."""
        if self.version == V16:
            return "StatusNotification", {
                "connectorId": evse,
                "errorCode": "NoError",
                "status": status,
                "timestamp": self.timestamp(),
            }
        return "StatusNotification", {
            "timestamp": self.timestamp(),
            "connectorStatus": "Available" if status == "Available" else "Occupied",
            "evseId": evse,
            "connectorId": 1,
        }

    def heartbeat(self) -> tuple[str, dict]:
        return "Heartbeat", {}

    # ------------------------------------------------------------ transactions

    def begin_session(self, token_no: int) -> None:
        """An EV plugs in: pick its charging power and state of charge."""
        self.tx_token = id_token(token_no)
        self.power_w = self.rng.choice((7_400.0, 11_000.0, 22_000.0))
        if self.version == V201:
            self.power_w = self.rng.choice((50_000.0, 11_000.0, 22_000.0))
        self.soc = self.rng.uniform(10.0, 60.0)
        self.seq_no = 0

    def authorize(self) -> tuple[str, dict]:
        if self.version == V16:
            return "Authorize", {"idTag": self.tx_token}
        return "Authorize", {"idToken": {"idToken": self.tx_token, "type": "ISO14443"}}

    def start_transaction(self) -> tuple[str, dict]:
        """1.6 StartTransaction (the CSMS assigns the id) or 2.0.1 TransactionEvent Started."""
        ts = self.timestamp()
        if self.version == V16:
            return "StartTransaction", {
                "connectorId": 1,
                "idTag": self.tx_token,
                "meterStart": int(self.energy_wh),
                "timestamp": ts,
            }
        self.tx_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self.seq_no = 0
        return self._transaction_event(
            "Started",
            "Authorized",
            ts,
            {"transactionId": self.tx_id, "chargingState": "Charging"},
            idToken={"idToken": self.tx_token, "type": "ISO14443"},
            evse={"id": 1, "connectorId": 1},
            meterValue=self._register(ts, "Transaction.Begin"),
        )

    def started(self, transaction_id: int) -> None:
        """1.6: remember the id the CSMS assigned."""
        self.tx_id = transaction_id

    def advance(self, seconds: float) -> None:
        """Let the meter run for ``seconds`` of (compressed) charging."""
        if self.power_w <= 0.0:
            return
        self.power_w = max(1_000.0, self.power_w * self.rng.uniform(0.97, 1.02))
        self.energy_wh += self.power_w * seconds / 3600.0
        self.soc = min(100.0, self.soc + self.rng.uniform(0.5, 2.0))

    def meter_values(self) -> tuple[str, dict]:
        """Periodic readings: energy register, power, three phase currents, SoC."""
        ts = self.timestamp()
        amps = self.power_w / (3 * 230.0)
        readings = (
            ("Energy.Active.Import.Register", None, "Outlet", "Wh", round(self.energy_wh, 1)),
            ("Power.Active.Import", None, "Outlet", "W", round(self.power_w, 1)),
            ("Current.Import", "L1", "Outlet", "A", round(amps * 1.01, 2)),
            ("Current.Import", "L2", "Outlet", "A", round(amps * 0.99, 2)),
            ("Current.Import", "L3", "Outlet", "A", round(amps, 2)),
            ("SoC", None, "EV", "Percent", round(self.soc, 1)),
        )
        sampled = self._sampled(readings)
        if self.version == V16:
            return "MeterValues", {
                "connectorId": 1,
                "transactionId": self.tx_id,
                "meterValue": [{"timestamp": ts, "sampledValue": sampled}],
            }
        self.seq_no += 1
        return self._transaction_event(
            "Updated",
            "MeterValuePeriodic",
            ts,
            {"transactionId": self.tx_id, "chargingState": "Charging"},
            meterValue=[{"timestamp": ts, "sampledValue": sampled}],
        )

    def light_meter_values(self) -> tuple[str, dict]:
        """A MeterValues outside any transaction with two readings: energy register and power.

        The meter creeps forward a little at each call, so every reading is new.
        """
        self.energy_wh += self.rng.uniform(1.0, 20.0)
        power = round(self.rng.uniform(3_000.0, 11_000.0), 1)
        readings = (
            ("Energy.Active.Import.Register", None, "Outlet", "Wh", round(self.energy_wh, 1)),
            ("Power.Active.Import", None, "Outlet", "W", power),
        )
        meter_value = [{"timestamp": self.timestamp(), "sampledValue": self._sampled(readings)}]
        if self.version == V16:
            return "MeterValues", {"connectorId": 1, "meterValue": meter_value}
        return "MeterValues", {"evseId": 1, "meterValue": meter_value}

    def _sampled(self, readings) -> list[dict]:
        """(measurand, phase, location, unit, value) rows as this version's sampledValue list."""
        sampled = []
        for measurand, phase, location, unit, value in readings:
            if self.version == V16:
                sv = {
                    "value": str(value),
                    "context": "Sample.Periodic",
                    "format": "Raw",
                    "measurand": measurand,
                    "location": location,
                    "unit": unit,
                }
            else:
                sv = {
                    "value": value,
                    "context": "Sample.Periodic",
                    "measurand": measurand,
                    "location": location,
                    "unitOfMeasure": {"unit": unit},
                }
            if phase:
                sv["phase"] = phase
            sampled.append(sv)
        return sampled

    def stop_transaction(self) -> tuple[str, dict]:
        """1.6 StopTransaction or 2.0.1 TransactionEvent Ended (the EV was unplugged)."""
        ts = self.timestamp()
        tx_id = self.tx_id
        self.tx_id = None
        self.power_w = 0.0
        if self.version == V16:
            return "StopTransaction", {
                "transactionId": tx_id,
                "idTag": self.tx_token,
                "meterStop": int(self.energy_wh),
                "timestamp": ts,
                "reason": "EVDisconnected",
            }
        self.seq_no += 1
        return self._transaction_event(
            "Ended",
            "EVCommunicationLost",
            ts,
            {"transactionId": tx_id, "chargingState": "Idle", "stoppedReason": "EVDisconnected"},
            meterValue=self._register(ts, "Transaction.End"),
        )

    def _transaction_event(
        self, event_type: str, trigger: str, ts: str, info: dict, **more: object
    ) -> tuple[str, dict]:
        """A 2.0.1 TransactionEvent at the current seqNo: the fields every one has, then ``more``."""
        return "TransactionEvent", {
            "eventType": event_type,
            "timestamp": ts,
            "triggerReason": trigger,
            "seqNo": self.seq_no,
            "transactionInfo": info,
            **more,
        }

    def _register(self, ts: str, context: str) -> list[dict]:
        """The energy register alone as a 2.0.1 meterValue list (a transaction's begin or end)."""
        return [
            {
                "timestamp": ts,
                "sampledValue": [
                    {
                        "value": round(self.energy_wh, 1),
                        "context": context,
                        "measurand": "Energy.Active.Import.Register",
                        "location": "Outlet",
                        "unitOfMeasure": {"unit": "Wh"},
                    }
                ],
            }
        ]

    def abandon_transaction(self) -> None:
        """Forget a transaction the CSMS refused to start."""
        self.tx_id = None
        self.power_w = 0.0
