"""TLS and mutual TLS for the gRPC port.

Three settings (docs/security.md):

* ``tls_cert_file`` + ``tls_key_file`` (both or neither): the server's PEM certificate chain
  (leaf first) and its PEM private key. TLS is on.
* ``tls_client_ca_file``: PEM CA certificate(s). mTLS is on: a client must present a
  certificate signed by one of them or the handshake fails.

Everything is parsed and cross-checked here, at start-up, because gRPC itself accepts a
mismatched or garbled key silently and then fails every handshake at request time.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from silentwatch.monitor.config import ConfigError, ServeSettings
from silentwatch.monitor.serving.secretfile import read_setting_file

log = logging.getLogger(__name__)


def _certificates(data: bytes, path: Path, key: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(
            f"{key}: {path} holds no PEM certificate (expected '-----BEGIN CERTIFICATE-----' "
            "blocks)"
        )
    return certs


def _check_key_matches(key_pem: bytes, leaf: x509.Certificate, s: ServeSettings) -> None:
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(
            f"tls_key_file: {s.tls_key_file} is encrypted; give an unencrypted key "
            "(openssl pkey -in KEY -out KEY.plain) and protect it with file permissions"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # The parser's own message is not repeated: never risk echoing key bytes.
        raise ConfigError(
            f"tls_key_file: {s.tls_key_file} is not a PEM private key (expected "
            "'-----BEGIN PRIVATE KEY-----' or an RSA/EC key block)"
        ) from None

    def spki(k: object) -> bytes:
        return k.public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    if spki(private.public_key()) != spki(leaf.public_key()):
        raise ConfigError(
            f"tls_key_file: {s.tls_key_file} is not the private key of the first certificate "
            f"in tls_cert_file {s.tls_cert_file}; the chain must start with the server's own "
            "certificate"
        )


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_credentials(settings: ServeSettings) -> grpc.ServerCredentials | None:
    """gRPC server credentials for the settings, or ``None`` for a plaintext port.

    Parameters
    ----------
    settings
        Uses ``tls_cert_file``, ``tls_key_file``, ``tls_client_ca_file`` and ``host``.

    Returns
    -------
    grpc.ServerCredentials or None
        TLS (``require_client_auth=True`` when a client CA is set), or ``None`` when no
        TLS setting is given.

    Raises
    ------
    ConfigError
        Only one of cert/key, a client CA without a server certificate, a missing or
        unreadable file, a file that is not PEM, or a key that does not match the
        certificate. The message names the key and what to do.
    """
    s = settings
    cert_path, key_path, ca_path = s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file
    if cert_path is None and key_path is None:
        if ca_path is not None:
            raise ConfigError(
                "tls_client_ca_file is set but tls_cert_file and tls_key_file are not: mTLS "
                "needs the server's own certificate and key too; set both"
            )
        if _is_loopback(s.host):
            log.info("gRPC TLS off: plaintext on loopback %s", s.host, extra={"event": "tls_off"})
        else:
            # Not refused: a service mesh may terminate TLS in front of us. But say so loudly.
            log.warning(
                "gRPC TLS off on non-loopback host %s: traffic is plaintext; set tls_cert_file "
                "and tls_key_file (docs/security.md) unless a mesh terminates TLS",
                s.host,
                extra={"event": "tls_off"},
            )
        return None
    if cert_path is None or key_path is None:
        given, missing = (
            ("tls_cert_file", "tls_key_file")
            if cert_path is not None
            else ("tls_key_file", "tls_cert_file")
        )
        raise ConfigError(
            f"{missing} is not set but {given} is: TLS needs both the certificate chain "
            "(tls_cert_file) and its private key (tls_key_file), or neither"
        )
    chain_pem = read_setting_file(cert_path, "tls_cert_file")
    key_pem = read_setting_file(key_path, "tls_key_file", secret=True)
    chain = _certificates(chain_pem, cert_path, "tls_cert_file")
    leaf = chain[0]
    _check_key_matches(key_pem, leaf, s)
    if leaf.not_valid_after_utc < dt.datetime.now(dt.UTC):
        # Warn, not refuse: clients decide; an expired certificate is an operator's problem
        # that must be visible, not a reason to take the classifier down.
        log.warning(
            "tls_cert_file: %s expired on %s; clients will refuse it",
            cert_path,
            leaf.not_valid_after_utc.isoformat(),
            extra={"event": "tls_cert_expired"},
        )
    ca_pem: bytes | None = None
    if ca_path is not None:
        ca_pem = read_setting_file(ca_path, "tls_client_ca_file")
        _certificates(ca_pem, ca_path, "tls_client_ca_file")
    creds = grpc.ssl_server_credentials(
        [(key_pem, chain_pem)],
        root_certificates=ca_pem,
        require_client_auth=ca_pem is not None,
    )
    # Subject and expiry only: public facts of the certificate, never the key.
    log.info(
        "gRPC %s on: certificate %s (expires %s)%s",
        "mTLS" if ca_pem is not None else "TLS",
        leaf.subject.rfc4514_string(),
        leaf.not_valid_after_utc.date().isoformat(),
        f"; client certificates required, signed by a CA in {ca_path}" if ca_pem else "",
        extra={"event": "mtls_on" if ca_pem is not None else "tls_on"},
    )
    return creds
