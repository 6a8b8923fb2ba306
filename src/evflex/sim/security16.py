"""OCPP 1.6 security extension of the simulated charge point (the Security Whitepaper).

Maps :mod:`evflex.sim.security` to 1.6: SignCertificate / CertificateSigned,
Install / GetInstalledCertificateIds / DeleteCertificate,
ExtendedTriggerMessage (SignChargePointCertificate among others),
SecurityEventNotification and the configuration keys ``SecurityProfile``,
``AuthorizationKey`` (write only) and ``CpoName``.
"""

from __future__ import annotations

from typing import Any

from ocpp.routing import on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from evflex.sim.config16 import INT, ConfigKey, ConfigTable
from evflex.sim.security import CERTIFICATE_STORE_MAX, MAX_CHAIN_SIZE, StationSecurity


class SecurityLink16:
    """The 1.6 security requests (mixed into the 1.6 link)."""

    station: Any
    trigger: Any
    trigger_actions: Any

    @on(Action.certificate_signed)
    def on_certificate_signed(self, certificate_chain: str, **_: Any) -> Any:
        refusal = self.station.certificate_signed(certificate_chain)
        return call_result.CertificateSigned(status="Rejected" if refusal else "Accepted")

    @on(Action.install_certificate)
    def on_install_certificate(self, certificate_type: str, certificate: str, **_: Any) -> Any:
        status = self.station.install_certificate(certificate_type, certificate)
        return call_result.InstallCertificate(status=status)

    @on(Action.get_installed_certificate_ids)
    def on_get_installed_certificate_ids(self, certificate_type: str, **_: Any) -> Any:
        found = self.station.installed_ids([certificate_type])
        if not found:
            return call_result.GetInstalledCertificateIds(status="NotFound")
        return call_result.GetInstalledCertificateIds(
            status="Accepted", certificate_hash_data=[i.hash_data for i in found]
        )

    @on(Action.delete_certificate)
    def on_delete_certificate(self, certificate_hash_data: dict[str, Any], **_: Any) -> Any:
        status = self.station.delete_certificate(certificate_hash_data)
        return call_result.DeleteCertificate(status=status)

    @on(Action.extended_trigger_message)
    def on_extended_trigger_message(
        self, requested_message: str, connector_id: int | None = None, **_: Any
    ) -> Any:
        st = self.station
        if connector_id not in (None, 0) and connector_id not in st.evses:
            return call_result.ExtendedTriggerMessage(status="Rejected")
        actions = {
            **self.trigger_actions(connector_id),
            "SignChargePointCertificate": st.request_certificate,
            "FirmwareStatusNotification": lambda: st.report_transfer(
                "firmware", call.SignedFirmwareStatusNotification(status="Idle")
            ),
            "LogStatusNotification": lambda: st.report_transfer(
                "log", call.LogStatusNotification(status="Idle")
            ),
        }
        del actions["DiagnosticsStatusNotification"]
        return call_result.ExtendedTriggerMessage(status=self.trigger(requested_message, actions))


class Security16(StationSecurity):
    """The 1.6 side of the station's security (mixed into the 1.6 station)."""

    config: ConfigTable
    now_text: Any
    invalid_own_certificate = "InvalidChargePointCertificate"

    def _add_security_keys(self) -> None:
        for key in (
            ConfigKey("SecurityProfile", str(self.security_profile), kind=INT),
            ConfigKey("CpoName", self.security.cpo_name or ""),
            ConfigKey(
                "CertificateSignedMaxChainSize", str(MAX_CHAIN_SIZE), readonly=True, kind=INT
            ),
            ConfigKey(
                "CertificateStoreMaxLength", str(CERTIFICATE_STORE_MAX), readonly=True, kind=INT
            ),
            ConfigKey("AdditionalRootCertificateCheck", "false", readonly=True),
        ):
            self.config.add(key)

    def security_configuration(self, key: str, value: str) -> str | None:
        """ChangeConfiguration of a security key: its status (None: not a security key)."""
        name = key.lower()
        if name == "authorizationkey":  # write only: never in GetConfiguration
            if not value.strip():
                return "Rejected"
            self.password = value.strip()
            return "Accepted"
        if name != "securityprofile":
            return None
        try:
            profile = int(value)
        except ValueError:
            return "Rejected"
        refusal = self.change_profile(profile)
        if refusal is not None:
            self.error(f"SecurityProfile {profile} rejected: {refusal.info}")
            return "Rejected"
        self.config.put("SecurityProfile", str(profile))
        return "Accepted"

    def organization(self) -> str | None:
        return self.config.text("CpoName") or self.security.cpo_name

    def _max_chain_size(self) -> int:
        return self.config.int("CertificateSignedMaxChainSize")

    def _sign_certificate_payload(self, csr: str) -> Any:
        return call.SignCertificate(csr=csr)

    def _security_event_payload(self, kind: str, info: str) -> Any:
        return call.SecurityEventNotification(
            type=kind, timestamp=self.now_text(), tech_info=info[:255]
        )
