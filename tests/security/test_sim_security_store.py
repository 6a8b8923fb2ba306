"""The simulated station's CA certificates (Install / GetInstalledCertificateIds /
DeleteCertificate) over OCPP, and a move to a TLS CSMS that trusts what was installed."""

from __future__ import annotations

import pytest

from evflex.security import pki
from evflex.sim import SimStation
from evflex.sim.model import SecuritySettings, StationSpec
from security.sim_csms import Lab, MiniCsms
from sim.conftest import wait_until

ROOT = {"1.6": "CentralSystemRootCertificate", "2.0.1": "CSMSRootCertificate"}
ROOT["2.1"] = ROOT["2.0.1"]
PASSWORD = "pw-0123456789abcdef"


def sim(url: str, version: str, made: list, **security) -> SimStation:
    spec = StationSpec(
        id="CS1", ocpp_version=version, evses=1, password=PASSWORD,
        security=SecuritySettings(**security),
    )  # fmt: skip
    st = SimStation(spec, url, reconnect_delay_s=0.05, response_timeout_s=5.0)
    made.append(st)
    return st


def hash_list(version: str, answer) -> list[dict]:
    if version == "1.6":
        return answer.certificate_hash_data or []
    return [c["certificate_hash_data"] for c in answer.certificate_hash_data_chain or []]


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
async def test_install_list_and_delete_ca_certificates(tmp_path, version, stations):
    lab = Lab(tmp_path)
    extra, _ = pki.make_ca("Other Root", "Lab")
    leaf_pem, _ = lab.station_cert("not-a-ca")
    async with MiniCsms(lab) as csms:
        st = sim(csms.url, version, stations, profile=2, ca_file=str(lab.ca_file))
        await st.start(timeout=10)
        use = ROOT[version]
        get = {"certificate_type": use if version == "1.6" else [use]}
        assert (await csms.call("CS1", "GetInstalledCertificateIds", **get)).status == "NotFound"
        for pem, expected in ((pki.cert_pem(extra), "Accepted"), (leaf_pem, "Rejected"),
                              ("not PEM", "Rejected")):  # fmt: skip
            answer = await csms.call("CS1", "InstallCertificate", certificate_type=use,
                                     certificate=pem)  # fmt: skip
            assert answer.status == expected
        answer = await csms.call("CS1", "GetInstalledCertificateIds", **get)
        assert answer.status == "Accepted"
        (found,) = hash_list(version, answer)
        h = pki.hash_data(extra)  # the library hands the answer over in snake case
        assert found == {
            "hash_algorithm": "SHA256", "issuer_name_hash": h["issuerNameHash"],
            "issuer_key_hash": h["issuerKeyHash"], "serial_number": h["serialNumber"],
        }  # fmt: skip
        delete = {"certificate_hash_data": pki.hash_data(extra)}
        assert (await csms.call("CS1", "DeleteCertificate", **delete)).status == "Accepted"
        assert (await csms.call("CS1", "DeleteCertificate", **delete)).status == "NotFound"
        assert (await csms.call("CS1", "GetInstalledCertificateIds", **get)).status == "NotFound"


@pytest.mark.parametrize("install", [True, False])
async def test_a_new_network_profile_trusts_an_installed_root_or_falls_back(
    tmp_path, stations, install
):
    """2.0.1 on profile 1 (plain ws, no CA file) → SetNetworkProfile to a TLS CSMS → Reset.
    With the TLS CSMS's root installed it connects there on profile 2; without, its TLS
    connects fail and after NetworkProfileConnectionAttempts it is back on the plain one."""
    lab = Lab(tmp_path)
    async with MiniCsms(lab, tls=False) as plain, MiniCsms(lab) as tls:
        st = sim(plain.url, "2.0.1", stations, profile=1)
        await st.start(timeout=10)
        if install:
            answer = await plain.call("CS1", "InstallCertificate",
                                      certificate_type="CSMSRootCertificate",
                                      certificate=lab.ca_file.read_text())  # fmt: skip
            assert answer.status == "Accepted"
        connection = {
            "ocpp_version": "OCPP20", "ocpp_transport": "JSON", "ocpp_csms_url": tls.url,
            "message_timeout": 30, "security_profile": 2, "ocpp_interface": "Wired0",
        }  # fmt: skip
        answer = await plain.call(
            "CS1", "SetNetworkProfile", configuration_slot=2, connection_data=connection
        )
        assert answer.status == "Accepted"
        data = [
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": name}, "attribute_value": v}
            for name, v in (("NetworkConfigurationPriority", "2,1"),
                            ("NetworkProfileConnectionAttempts", "2"))
        ]  # fmt: skip
        answer = await plain.call("CS1", "SetVariables", set_variable_data=data)
        assert [r["attribute_status"] for r in answer.set_variable_result] == ["Accepted"] * 2
        await plain.call("CS1", "Reset", type="Immediate")
        if install:
            await wait_until(lambda: tls.of("CS1") and st.online, 10)
            (hs,) = tls.of("CS1")
            assert hs.tls and hs.password == PASSWORD
            assert st.security_profile == 2 and st.profile_reached == 2
        else:
            await wait_until(lambda: len(plain.of("CS1")) == 2 and st.online, 15)
            assert len(st.connect_failures) == 2 and not tls.handshakes
            assert st.security_profile == 1
