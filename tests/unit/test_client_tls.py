"""The SDK's TLS settings: a CA bundle and a client certificate, loaded or refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from modelplane import Client, errors


def test_ca_bundle_and_client_certificate_load(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf = ca.issue_cert("client")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "client-key.pem"))
    with Client(
        "https://127.0.0.1:1",
        api_key="k",
        ca_bundle=tmp_path / "ca.pem",
        client_cert=tmp_path / "client.pem",
        client_key=tmp_path / "client-key.pem",
    ) as client:
        assert client.url == "https://127.0.0.1:1"


def test_settings_come_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODELPLANE_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(errors.InvalidInput, match=r"cannot load the TLS files .*missing\.pem"):
        Client("https://127.0.0.1:1", api_key="k")


def test_a_key_that_does_not_match_is_refused(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.issue_cert("a").cert_chain_pems[0].write_to_path(str(tmp_path / "a.pem"))
    ca.issue_cert("b").private_key_pem.write_to_path(str(tmp_path / "b-key.pem"))
    with pytest.raises(errors.InvalidInput, match="MODELPLANE_CLIENT_CERT") as info:
        Client(
            "https://127.0.0.1:1",
            api_key="k",
            client_cert=tmp_path / "a.pem",
            client_key=tmp_path / "b-key.pem",
        )
    assert "\n" not in info.value.message
