"""The pure parts of TLS client certificates (issue [14]): how a refusal is worded, which
configurations are refused before any connection, and that older ConnectorConfig calls
still fit. The real handshakes are in tests/e2e/test_client_certificates.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from adapter import config
from adapter.mqtt import MqttTlsError, tls_context
from adapter.sepl import ConnectorConfig, ConnectorError
from adapter.sepl.client import client_certificate_refusal, tls_alert

CERT = Path("/etc/sepl/client.crt")


def words(alert: str | None, cert: Path | None) -> str:
    return client_certificate_refusal(alert, cert, peer="the broker", setting="MQTT_CERT_FILE")


@pytest.mark.parametrize(
    ("alert", "cert", "expected"),
    [
        (
            "TLSV13_ALERT_CERTIFICATE_REQUIRED",
            None,
            "the broker requires a TLS client certificate and none is given (MQTT_CERT_FILE)",
        ),
        (
            None,
            None,
            "the broker ended the TLS connection without an alert; it may require a TLS client"
            " certificate, and none is given (MQTT_CERT_FILE)",
        ),
        (
            # What a TLS 1.2 server answers a client that sends no certificate.
            "SSLV3_ALERT_HANDSHAKE_FAILURE",
            None,
            "the broker ended the TLS connection (handshake failure alert); it may require a"
            " TLS client certificate, and none is given (MQTT_CERT_FILE)",
        ),
        (
            "TLSV1_ALERT_UNKNOWN_CA",
            CERT,
            f"the broker did not accept the TLS client certificate {CERT} (unknown ca alert)",
        ),
        (
            "SSLV3_ALERT_CERTIFICATE_EXPIRED",
            CERT,
            f"the broker did not accept the TLS client certificate {CERT}"
            " (certificate expired alert)",
        ),
        (
            None,
            CERT,
            "the broker ended the TLS connection without an alert; it may not accept the TLS"
            f" client certificate {CERT} (is it signed by a CA the broker trusts, and still"
            " valid?)",
        ),
        # Alerts that are not about the client certificate say only what they are.
        (
            "SSLV3_ALERT_HANDSHAKE_FAILURE",
            CERT,
            "the broker refused the TLS handshake (handshake failure alert)",
        ),
        (
            "TLSV1_ALERT_PROTOCOL_VERSION",
            None,
            "the broker refused the TLS handshake (protocol version alert)",
        ),
    ],
)
def test_refusal_words(alert: str | None, cert: Path | None, expected: str) -> None:
    assert words(alert, cert) == expected


def test_tls_alert_is_the_reason_of_an_alert_only() -> None:
    alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    alert.reason = "TLSV1_ALERT_UNKNOWN_CA"
    other = ssl.SSLError(1, "[SSL: NO_SHARED_CIPHER] no shared cipher")
    other.reason = "NO_SHARED_CIPHER"
    assert tls_alert(alert) == "TLSV1_ALERT_UNKNOWN_CA"
    assert tls_alert(other) is None
    assert tls_alert(ConnectionResetError()) is None


def test_old_connector_config_calls_still_fit() -> None:
    positional = ConnectorConfig("wss://platform.example/", None, True)
    assert (positional.url, positional.https) == ("wss://platform.example/", True)
    assert (positional.cert_file, positional.key_file) == (None, None)
    positional.check_tls()  # nothing to check without a certificate


def test_from_settings_takes_the_connector_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    cert.write_text("certificate")
    key.write_text("key")
    settings = config.load(
        None,
        {"HOME": str(tmp_path), "CONNECTOR_CERT_FILE": str(cert), "CONNECTOR_KEY_FILE": str(key)},
    )
    connector = ConnectorConfig.from_settings(settings)
    assert (connector.cert_file, connector.key_file) == (cert, key)


@pytest.mark.parametrize(
    ("fields", "allowed"),
    [
        ({"url": "ws://127.0.0.1:8093/"}, False),  # would never be sent
        ({"url": "wss://platform.example/"}, True),
        ({"lookup_url": "https://platform.example/lookup"}, True),  # may answer wss://
        ({"url": "ws://127.0.0.1:8093/", "https": True}, True),  # https registration
    ],
)
def test_a_client_certificate_over_plain_ws_is_refused(
    tmp_path: Path, fields: dict[str, object], allowed: bool
) -> None:
    garbage = tmp_path / "client.crt"
    garbage.write_text("not loaded when the URL is refused first")
    configuration = ConnectorConfig(cert_file=garbage, **fields)  # type: ignore[arg-type]
    with pytest.raises(ConnectorError) as error:
        configuration.check_tls()
    if allowed:  # it went on to read the certificate
        assert "no PEM certificate" in str(error.value)
    else:
        assert str(error.value) == (
            f"TLS client certificate {garbage}: ws://127.0.0.1:8093/ is not a wss:// URL, and a"
            " client certificate is sent only over TLS"
        )


def test_a_key_without_its_certificate_is_refused() -> None:
    with pytest.raises(ConnectorError, match="TLS client key /k given without its certificate"):
        ConnectorConfig(url="wss://x/", key_file=Path("/k")).check_tls()


def test_an_mqtt_certificate_without_mqtt_tls_is_refused(tmp_path: Path) -> None:
    cert = tmp_path / "client.crt"
    cert.write_text("certificate")
    settings = config.load(None, {"HOME": str(tmp_path), "MQTT_CERT_FILE": str(cert)})
    with pytest.raises(MqttTlsError) as error:
        tls_context(settings)
    assert str(error.value) == (
        f"MQTT_CERT_FILE={cert} needs MQTT_TLS=true: a client certificate is sent only over"
        " TLS (the broker's TLS port, 8883 by default)"
    )
    assert tls_context(config.load(None, {"HOME": str(tmp_path)})) is None
