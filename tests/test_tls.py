"""TLS and mTLS on the gRPC port, against a real sidecar over loopback (docs/security.md)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from silentwatch.monitor.config import ConfigError, load_settings
from silentwatch.monitor.serving.tls import server_credentials

from .test_process import serve, stop

TIMEOUT = 10.0


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _make_ca(d: Path, cn: str) -> tuple[Issued, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    issued = Issued(d / f"{cn}.pem", d / f"{cn}.key")
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issued.key.write_bytes(_key_pem(key))
    issued.key.chmod(0o600)
    return issued, key, cert


def _issue(
    d: Path,
    cn: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    server: bool,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    issued = Issued(d / f"{cn}.pem", d / f"{cn}.key")
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issued.key.write_bytes(_key_pem(key))
    issued.key.chmod(0o600)
    return issued


@dataclass(frozen=True)
class Pki:
    ca: Issued
    server: Issued
    client: Issued
    other_ca: Issued
    other_client: Issued  # signed by other_ca: must not get into an mTLS sidecar


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key, ca_cert = _make_ca(d, "test-ca")
    other, other_key, other_cert = _make_ca(d, "other-ca")
    return Pki(
        ca=ca,
        server=_issue(d, "server", ca_key, ca_cert, server=True),
        client=_issue(d, "client", ca_key, ca_cert, server=False),
        other_ca=other,
        other_client=_issue(d, "other-client", other_key, other_cert, server=False),
    )


def _check(channel: grpc.Channel) -> health_pb2.HealthCheckResponse.ServingStatus:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT).status


def _tls_channel(target: str, pki: Pki, client: Issued | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    return grpc.secure_channel(target, creds)


def _tls(pki: Pki, **more: object) -> dict:
    return {"tls_cert_file": pki.server.cert, "tls_key_file": pki.server.key, **more}


def test_tls_call_succeeds_with_the_ca(sidecar_factory, pki, caplog):
    caplog.set_level(logging.INFO)
    sc = sidecar_factory(**_tls(pki))
    with _tls_channel(sc.grpc_target, pki) as ch:
        assert _check(ch) == health_pb2.HealthCheckResponse.SERVING
    assert any(getattr(r, "event", None) == "tls_on" for r in caplog.records)
    # The INFO line names the certificate; no record carries key material.
    key_body = pki.server.key.read_text().splitlines()[1]
    for r in caplog.records:
        text = r.getMessage()
        assert "PRIVATE KEY" not in text and key_body not in text


def test_plaintext_client_is_refused_by_a_tls_port(sidecar_factory, pki):
    sc = sidecar_factory(**_tls(pki))
    with grpc.insecure_channel(sc.grpc_target) as ch, pytest.raises(grpc.RpcError) as e:
        _check(ch)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_client_that_does_not_trust_the_server_is_refused(sidecar_factory, pki):
    sc = sidecar_factory(**_tls(pki))
    creds = grpc.ssl_channel_credentials(root_certificates=pki.other_ca.cert.read_bytes())
    with grpc.secure_channel(sc.grpc_target, creds) as ch, pytest.raises(grpc.RpcError) as e:
        _check(ch)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_without_a_client_certificate_is_refused(sidecar_factory, pki):
    sc = sidecar_factory(**_tls(pki, tls_client_ca_file=pki.ca.cert))
    with _tls_channel(sc.grpc_target, pki) as ch, pytest.raises(grpc.RpcError) as e:
        _check(ch)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_with_a_client_certificate_succeeds(sidecar_factory, pki, caplog):
    caplog.set_level(logging.INFO)
    sc = sidecar_factory(**_tls(pki, tls_client_ca_file=pki.ca.cert))
    with _tls_channel(sc.grpc_target, pki, client=pki.client) as ch:
        assert _check(ch) == health_pb2.HealthCheckResponse.SERVING
    assert any(getattr(r, "event", None) == "mtls_on" for r in caplog.records)


def test_mtls_refuses_a_client_certificate_from_another_ca(sidecar_factory, pki):
    sc = sidecar_factory(**_tls(pki, tls_client_ca_file=pki.ca.cert))
    client = pki.other_client
    with _tls_channel(sc.grpc_target, pki, client=client) as ch, pytest.raises(grpc.RpcError) as e:
        _check(ch)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_no_tls_settings_means_plaintext(bundle_dir):
    assert server_credentials(load_settings(bundle=bundle_dir)) is None


# -- configuration errors name the key -------------------------------------------------------


def _creds(bundle_dir: Path, **overrides: object) -> grpc.ServerCredentials | None:
    return server_credentials(load_settings(bundle=bundle_dir, **overrides))


def test_cert_without_key_names_tls_key_file(bundle_dir, pki):
    with pytest.raises(ConfigError, match=r"^tls_key_file is not set but tls_cert_file is"):
        _creds(bundle_dir, tls_cert_file=pki.server.cert)


def test_key_without_cert_names_tls_cert_file(bundle_dir, pki):
    with pytest.raises(ConfigError, match=r"^tls_cert_file is not set but tls_key_file is"):
        _creds(bundle_dir, tls_key_file=pki.server.key)


def test_client_ca_without_server_cert_names_tls_client_ca_file(bundle_dir, pki):
    with pytest.raises(ConfigError, match=r"^tls_client_ca_file is set .* mTLS needs"):
        _creds(bundle_dir, tls_client_ca_file=pki.ca.cert)


@pytest.mark.parametrize("key", ["tls_cert_file", "tls_key_file", "tls_client_ca_file"])
def test_missing_file_names_the_key_and_the_path(bundle_dir, pki, tmp_path, key):
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError) as e:
        _creds(bundle_dir, **{**_tls(pki, tls_client_ca_file=pki.ca.cert), key: missing})
    assert str(e.value).startswith(f"{key}: {missing} does not exist")


def test_unreadable_key_file_names_the_key(bundle_dir, pki, tmp_path):
    with pytest.raises(ConfigError, match=r"^tls_key_file: .* is a directory"):
        _creds(bundle_dir, **_tls(pki, tls_key_file=tmp_path))


def test_key_of_another_certificate_names_tls_key_file(bundle_dir, pki):
    with pytest.raises(ConfigError, match=r"^tls_key_file: .* is not the private key"):
        _creds(bundle_dir, **_tls(pki, tls_key_file=pki.client.key))


def test_garbage_files_name_their_keys(bundle_dir, pki, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a pem file\n")
    with pytest.raises(ConfigError, match=r"^tls_cert_file: .* holds no PEM certificate"):
        _creds(bundle_dir, **_tls(pki, tls_cert_file=junk))
    with pytest.raises(ConfigError, match=r"^tls_key_file: .* is not a PEM private key"):
        _creds(bundle_dir, **_tls(pki, tls_key_file=junk))
    with pytest.raises(ConfigError, match=r"^tls_client_ca_file: .* holds no PEM certificate"):
        _creds(bundle_dir, **_tls(pki, tls_client_ca_file=junk))


def test_sidecar_start_refuses_a_bad_tls_setting(sidecar_factory, pki):
    with pytest.raises(ConfigError, match="tls_key_file"):
        sidecar_factory(tls_cert_file=pki.server.cert)


def test_json_logs_stay_json_when_handshakes_fail(bundle_dir, pki):
    """A refused plaintext client makes gRPC's core log a handshake failure: not on stderr."""
    proc = serve(
        "--bundle",
        str(bundle_dir),
        "--log-format",
        "json",
        "--tls-cert-file",
        str(pki.server.cert),
        "--tls-key-file",
        str(pki.server.key),
        "--tls-client-ca-file",
        str(pki.ca.cert),
        drop_env=("GRPC_VERBOSITY",),
    )
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        target = json.loads(line)["grpc"]
        with grpc.insecure_channel(target) as ch, pytest.raises(grpc.RpcError):
            _check(ch)
        with _tls_channel(target, pki) as ch, pytest.raises(grpc.RpcError):
            _check(ch)
        with _tls_channel(target, pki, client=pki.client) as ch:
            assert _check(ch) == health_pb2.HealthCheckResponse.SERVING
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines()]  # every stderr line is JSON
    assert any(r.get("event") == "mtls_on" for r in records)
    assert "PRIVATE KEY" not in err
