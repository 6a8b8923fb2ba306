"""Stations for the certificate tests: the ``ocpp`` library's own ChargePoints (1.6 with
the security extension, 2.0.1, 2.1) that make keys and CSRs with evflex's pki and
keep the certificates the CSMS sends or installs."""

from __future__ import annotations

import asyncio

from ocpp.routing import on
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call as c16
from ocpp.v16 import call_result as r16
from ocpp.v21 import ChargePoint as CP21
from ocpp.v21 import call as c21
from ocpp.v21 import call_result as r21
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call as c201
from ocpp.v201 import call_result as r201
from sqlalchemy import update

from evflex.security import pki
from evflex.store.tables import Station

CPO = "ACME Charging"
SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}


class CertStore:
    """What a station keeps: its key, the chains it got, the CA certificates installed,
    every request received, and how it answers CertificateSigned (a list, used in turn)."""

    def init_store(self) -> None:
        self.key = pki.new_key()
        self.chains: list[str] = []
        self.installed: dict[str, tuple[str, str]] = {}  # serial -> (type, pem)
        self.received: list[tuple[str, dict]] = []
        self.signed_answers: list[str] = []
        self.answers: dict[str, str] = {}  # action -> status to answer
        self.got_chain = asyncio.Event()

    def csr(self, cn: str, o: str | None = CPO) -> str:
        return pki.make_csr(self.key, cn, o).decode()

    def _signed(self, chain: str, **kw) -> str:
        self.received.append(("CertificateSigned", {"certificate_chain": chain, **kw}))
        status = self.signed_answers.pop(0) if self.signed_answers else "Accepted"
        if status == "Accepted":
            self.chains.append(chain)
            self.got_chain.set()
        return status

    def _install(self, certificate_type: str, certificate: str) -> str:
        self.received.append(("InstallCertificate", {"certificate_type": certificate_type}))
        cert = pki.load_cert(certificate)
        self.installed[format(cert.serial_number, "x")] = (certificate_type, certificate)
        return "Accepted"

    def _hashes(self, types: list[str] | None) -> list[tuple[str, dict]]:
        out = []
        for kind, pem in self.installed.values():
            if types and kind not in types:
                continue
            h = pki.hash_data(pki.load_cert(pem))
            out.append((kind, {
                "hash_algorithm": h["hashAlgorithm"], "issuer_name_hash": h["issuerNameHash"],
                "issuer_key_hash": h["issuerKeyHash"], "serial_number": h["serialNumber"],
            }))  # fmt: skip
        return out

    def _delete(self, certificate_hash_data: dict) -> str:
        self.received.append(("DeleteCertificate", certificate_hash_data))
        serial = certificate_hash_data["serial_number"]
        return "Accepted" if self.installed.pop(serial, None) else "NotFound"

    def actions(self) -> list[str]:
        return [a for a, _ in self.received]


class Cert16(CP16, CertStore):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.init_store()
        self.config = {"SecurityProfile": "1"}

    async def sign(self, csr: str) -> str:
        return (await self.call(c16.SignCertificate(csr=csr))).status

    @on("CertificateSigned")
    def on_signed(self, certificate_chain, **kw):
        return r16.CertificateSigned(status=self._signed(certificate_chain))

    @on("InstallCertificate")
    def on_install(self, certificate_type, certificate, **kw):
        return r16.InstallCertificate(status=self._install(certificate_type, certificate))

    @on("GetInstalledCertificateIds")
    def on_get_installed(self, certificate_type, **kw):
        self.received.append(("GetInstalledCertificateIds", {"certificate_type": certificate_type}))
        found = [h for _, h in self._hashes([certificate_type])]
        if not found:
            return r16.GetInstalledCertificateIds(status="NotFound")
        return r16.GetInstalledCertificateIds(status="Accepted", certificate_hash_data=found)

    @on("DeleteCertificate")
    def on_delete(self, certificate_hash_data, **kw):
        return r16.DeleteCertificate(status=self._delete(certificate_hash_data))

    @on("ExtendedTriggerMessage")
    def on_extended_trigger(self, requested_message, **kw):
        self.received.append(("ExtendedTriggerMessage", {"requested_message": requested_message}))
        return r16.ExtendedTriggerMessage(status="Accepted")

    @on("ChangeConfiguration")
    def on_change_configuration(self, key, value, **kw):
        self.received.append(("ChangeConfiguration", {"key": key, "value": value}))
        status = self.answers.get("ChangeConfiguration", "Accepted")
        if status == "Accepted":
            self.config[key] = value
        return r16.ChangeConfiguration(status=status)


class _Cert2x(CertStore):
    """What 2.0.1 and 2.1 stations answer alike (``r`` and ``c``: the version's modules)."""

    r = r201
    c = c201

    def init_2x(self) -> None:
        self.init_store()
        self.variables = {("OCPPCommCtrlr", "NetworkConfigurationPriority"): "1"}
        self.network_profiles: dict[int, dict] = {}

    async def sign(self, csr: str, **kw):
        return await self.call(self.c.SignCertificate(csr=csr, **kw))

    @on("CertificateSigned")
    def on_signed(self, certificate_chain, **kw):
        return self.r.CertificateSigned(status=self._signed(certificate_chain, **kw))

    @on("InstallCertificate")
    def on_install(self, certificate_type, certificate, **kw):
        return self.r.InstallCertificate(status=self._install(certificate_type, certificate))

    @on("GetInstalledCertificateIds")
    def on_get_installed(self, certificate_type=None, **kw):
        self.received.append(("GetInstalledCertificateIds", {"certificate_type": certificate_type}))
        found = [
            {"certificate_type": kind, "certificate_hash_data": h}
            for kind, h in self._hashes(certificate_type)
        ]
        if not found:
            return self.r.GetInstalledCertificateIds(status="NotFound")
        return self.r.GetInstalledCertificateIds(
            status="Accepted", certificate_hash_data_chain=found
        )

    @on("DeleteCertificate")
    def on_delete(self, certificate_hash_data, **kw):
        return self.r.DeleteCertificate(status=self._delete(certificate_hash_data))

    @on("TriggerMessage")
    def on_trigger(self, requested_message, **kw):
        self.received.append(("TriggerMessage", {"requested_message": requested_message}))
        return self.r.TriggerMessage(status="Accepted")

    @on("SetNetworkProfile")
    def on_set_network_profile(self, configuration_slot, connection_data, **kw):
        self.received.append(("SetNetworkProfile", {"slot": configuration_slot, **connection_data}))
        status = self.answers.get("SetNetworkProfile", "Accepted")
        if status == "Accepted":
            self.network_profiles[configuration_slot] = connection_data
        return self.r.SetNetworkProfile(status=status)

    @on("GetVariables")
    def on_get_variables(self, get_variable_data, **kw):
        self.received.append(("GetVariables", {"data": get_variable_data}))
        out = []
        for item in get_variable_data:
            key = (item["component"]["name"], item["variable"]["name"])
            value = self.variables.get(key)
            out.append({
                "attribute_status": "Accepted" if value is not None else "UnknownVariable",
                **({"attribute_value": value} if value is not None else {}),
                "component": item["component"], "variable": item["variable"],
            })  # fmt: skip
        return self.r.GetVariables(get_variable_result=out)

    @on("SetVariables")
    def on_set_variables(self, set_variable_data, **kw):
        self.received.append(("SetVariables", {"data": set_variable_data}))
        status = self.answers.get("SetVariables", "Accepted")
        out = []
        for item in set_variable_data:
            key = (item["component"]["name"], item["variable"]["name"])
            if status == "Accepted":
                self.variables[key] = item["attribute_value"]
            out.append({
                "attribute_status": status,
                "component": item["component"], "variable": item["variable"],
            })  # fmt: skip
        return self.r.SetVariables(set_variable_result=out)

    @on("Reset")
    def on_reset(self, type, **kw):
        self.received.append(("Reset", {"type": type}))
        return self.r.Reset(status="Accepted")


class Cert201(_Cert2x, CP201):
    def __init__(self, *a, **kw):
        CP201.__init__(self, *a, **kw)
        self.init_2x()


class Cert21(_Cert2x, CP21):
    r = r21
    c = c21

    def __init__(self, *a, **kw):
        CP21.__init__(self, *a, **kw)
        self.init_2x()


STATIONS = {"1.6": Cert16, "2.0.1": Cert201, "2.1": Cert21}


async def set_profile(node, station_id: str, profile: int | None, serial: str | None = None):
    """Store a station's security profile (and serial number) as ``evflex station add``
    would, after it connected (these tests run over plain WebSockets)."""
    values: dict = {"security_profile": profile}
    if serial is not None:
        values["serial_number"] = serial

    async def job(s):
        await s.execute(update(Station).where(Station.id == station_id).values(**values))

    await node.rt.writer.submit(job)
