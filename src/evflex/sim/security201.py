"""OCPP 2.0.1 / 2.1 security of the simulated charging station (functional block A and M).

Maps :mod:`evflex.sim.security` to 2.x: SignCertificate
(ChargingStationCertificate) / CertificateSigned, Install /
GetInstalledCertificateIds / DeleteCertificate, SetNetworkProfile,
SecurityEventNotification and the device model's ``SecurityCtrlr``
(``SecurityProfile``, ``OrganizationName``, ``CertificateEntries``,
``MaxCertificateChainSize``) and ``OCPPCommCtrlr.NetworkConfigurationPriority``.
The TriggerMessage ``SignChargingStationCertificate`` is in the 2.0.1 codec's table.
"""

from __future__ import annotations

from typing import Any

from ocpp.routing import on
from ocpp.v201 import call, call_result
from ocpp.v201.enums import Action

from evflex.sim.devicemodel import READ_ONLY, READ_WRITE, DeviceModel, Variable
from evflex.sim.security import MAX_CHAIN_SIZE, SecurityRefusal, StationSecurity

SECURITY = "SecurityCtrlr"
COMM = "OCPPCommCtrlr"


def _info(refusal: SecurityRefusal) -> dict[str, Any]:
    return {"reason_code": refusal.reason[:20], "additional_info": refusal.info[:512]}


class SecurityLink201:
    """The 2.x security requests (mixed into the 2.0.1 link, inherited by 2.1)."""

    station: Any

    @on(Action.certificate_signed)
    def on_certificate_signed(
        self, certificate_chain: str, certificate_type: str | None = None, **_: Any
    ) -> Any:
        refusal = self.station.certificate_signed(certificate_chain, certificate_type)
        if refusal is not None:
            return call_result.CertificateSigned(status="Rejected", status_info=_info(refusal))
        return call_result.CertificateSigned(status="Accepted")

    @on(Action.install_certificate)
    def on_install_certificate(self, certificate_type: str, certificate: str, **_: Any) -> Any:
        status = self.station.install_certificate(certificate_type, certificate)
        return call_result.InstallCertificate(status=status)

    @on(Action.get_installed_certificate_ids)
    def on_get_installed_certificate_ids(
        self, certificate_type: list[str] | None = None, **_: Any
    ) -> Any:
        found = self.station.installed_ids(certificate_type)
        if not found:
            return call_result.GetInstalledCertificateIds(status="NotFound")
        chain = [{"certificate_type": i.use, "certificate_hash_data": i.hash_data} for i in found]
        return call_result.GetInstalledCertificateIds(
            status="Accepted", certificate_hash_data_chain=chain
        )

    @on(Action.delete_certificate)
    def on_delete_certificate(self, certificate_hash_data: dict[str, Any], **_: Any) -> Any:
        status = self.station.delete_certificate(certificate_hash_data)
        return call_result.DeleteCertificate(status=status)

    @on(Action.set_network_profile)
    def on_set_network_profile(
        self, configuration_slot: int, connection_data: dict[str, Any], **_: Any
    ) -> Any:
        refusal = self.station.set_network_profile(
            configuration_slot,
            int(connection_data.get("security_profile", -1)),
            connection_data.get("ocpp_csms_url"),
        )
        if refusal is not None:
            return call_result.SetNetworkProfile(status="Rejected", status_info=_info(refusal))
        return call_result.SetNetworkProfile(status="Accepted")


class Security201(StationSecurity):
    """The 2.x side of the station's security (mixed into the 2.0.1 station)."""

    dm: DeviceModel
    now_text: Any

    def _add_security_variables(self) -> None:
        dm = self.dm
        profile = dm.find(SECURITY, "SecurityProfile")
        profile.mutability = READ_WRITE
        profile.getter = lambda: str(self.security_profile)
        if self.security.cpo_name:
            dm.put(SECURITY, "OrganizationName", self.security.cpo_name)
        for var in (
            Variable(
                SECURITY,
                "CertificateEntries",
                data_type="integer",
                mutability=READ_ONLY,
                getter=lambda: str(len(self.installed)),
            ),
            Variable(
                SECURITY,
                "MaxCertificateChainSize",
                str(MAX_CHAIN_SIZE),
                data_type="integer",
                mutability=READ_ONLY,
            ),
            Variable(COMM, "NetworkConfigurationPriority", "1", data_type="SequenceList"),
            Variable(COMM, "NetworkProfileConnectionAttempts", "3", data_type="integer"),
        ):
            dm.add(var)
        dm.check = self._security_check

    def _security_check(self, var: Variable, value: str) -> str | None:
        """Why a SetVariables value of a security variable is refused (None: it is not)."""
        key = (var.component, var.name)
        if key == (SECURITY, "SecurityProfile"):
            refusal = self.profile_refusal(int(value))
            return refusal.reason if refusal is not None else None
        if key == (COMM, "NetworkConfigurationPriority"):
            slots = [s.strip() for s in value.split(",") if s.strip()]
            if not slots or any(
                not s.isdigit() or int(s) not in self.network_profiles for s in slots
            ):
                return "UnknownSlot"
        return None

    def _security_variable_changed(self, var: Variable) -> None:
        key = (var.component, var.name)
        if key == (SECURITY, "SecurityProfile"):
            self.change_profile(int(var.value))
        elif key == (COMM, "NetworkConfigurationPriority"):
            self.use_network_priority(var.value.split(","))

    def organization(self) -> str | None:
        return self.dm.text(SECURITY, "OrganizationName") or self.security.cpo_name

    def _attempts(self) -> int:
        return max(1, self.dm.int(COMM, "NetworkProfileConnectionAttempts"))

    def _max_chain_size(self) -> int:
        return self.dm.int(SECURITY, "MaxCertificateChainSize")

    def _sign_certificate_payload(self, csr: str) -> Any:
        return call.SignCertificate(csr=csr, certificate_type="ChargingStationCertificate")

    def _security_event_payload(self, kind: str, info: str) -> Any:
        return call.SecurityEventNotification(
            type=kind, timestamp=self.now_text(), tech_info=info[:255]
        )
