"""Ed25519 bundle signatures (monitor/bundle/signature.py, docs/security.md)."""

from __future__ import annotations

import base64
import json
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from silentwatch.cli import main
from silentwatch.monitor.bundle import BundleError, load_bundle
from silentwatch.monitor.bundle.signature import (
    SIGNATURE_FILE,
    generate_keypair,
    sign_bundle,
    verify_bundle_signature,
)


@pytest.fixture
def bundle(bundle_dir: Path, tmp_path: Path) -> Path:
    # bundle_dir is session-scoped and shared: sign and tamper with a copy only.
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    priv, pub = tmp_path / "signing.key", tmp_path / "signing.pub"
    generate_keypair(priv, pub)
    return priv, pub


def verify(bundle: Path, pub: Path) -> str:
    b = load_bundle(bundle)
    return verify_bundle_signature(b.path, b.sha256, pub)


def test_keygen_writes_pem_and_a_private_file_only_the_owner_can_read(keys):
    priv, pub = keys
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert priv.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(BundleError, match="refusing to overwrite"):
        generate_keypair(priv, pub.with_suffix(".new"))


def test_sign_then_verify(bundle, keys):
    priv, pub = keys
    path = sign_bundle(bundle, priv)
    assert path == bundle / SIGNATURE_FILE
    doc = json.loads(path.read_text())
    assert doc["algorithm"] == "ed25519"
    assert doc["signed"] == load_bundle(bundle).sha256
    assert len(base64.b64decode(doc["signature"])) == 64
    assert verify(bundle, pub) == doc["key_fingerprint"]
    # The signature file is not part of the manifest: the bundle still loads unchanged.
    assert load_bundle(bundle).sha256 == doc["signed"]


def test_tampered_manifest_is_refused(bundle, keys):
    priv, pub = keys
    sign_bundle(bundle, priv)
    m = bundle / "manifest.json"
    doc = json.loads(m.read_text())
    doc["thresholds"]["flag"] = 0.99  # a still-valid bundle that serves differently
    m.write_text(json.dumps(doc, indent=2))
    with pytest.raises(BundleError, match="signed a different manifest"):
        verify(bundle, pub)


def test_tampered_manifest_with_a_forged_signed_field_is_refused(bundle, keys):
    priv, pub = keys
    sig = sign_bundle(bundle, priv)
    m = bundle / "manifest.json"
    m.write_text(m.read_text().replace('"flag": 0.5', '"flag": 0.99'))
    doc = json.loads(sig.read_text())
    doc["signed"] = load_bundle(bundle).sha256
    sig.write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="bad signature"):
        verify(bundle, pub)


def test_signature_by_another_key_is_refused(bundle, keys, tmp_path):
    _, pub = keys
    other_priv = tmp_path / "other.key"
    generate_keypair(other_priv, tmp_path / "other.pub")
    sign_bundle(bundle, other_priv)
    with pytest.raises(BundleError, match=r"bad signature.*another key"):
        verify(bundle, pub)


def test_unsigned_bundle_is_refused_when_a_key_is_configured(bundle, keys):
    with pytest.raises(BundleError, match=r"no signature\.json.*silentwatch bundle sign"):
        verify(bundle, keys[1])


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "not a JSON object"),
        ("[]", "not a JSON object"),
        ('{"algorithm": "rsa", "signed": "", "signature": ""}', "algorithm 'rsa'"),
        ('{"algorithm": "ed25519", "signed": "abc", "signature": ""}', "'signed' is not"),
        (
            '{"algorithm": "ed25519", "signed": "' + "a" * 64 + '", "signature": "@@"}',
            "'signature' is not",
        ),
    ],
)
def test_malformed_signature_file_is_refused(bundle, keys, content, problem):
    (bundle / SIGNATURE_FILE).write_text(content)
    with pytest.raises(BundleError, match="malformed") as e:
        verify(bundle, keys[1])
    assert problem in str(e.value)


def test_keys_that_are_not_ed25519_or_unreadable_are_refused(bundle, keys, tmp_path):
    priv, _ = keys
    sign_bundle(bundle, priv)
    ec_pub = tmp_path / "ec.pub"
    ec_pub.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(BundleError, match="is an EC key, not Ed25519"):
        verify(bundle, ec_pub)
    with pytest.raises(BundleError, match="cannot read bundle_public_key"):
        verify(bundle, tmp_path / "missing.pub")
    junk = tmp_path / "junk.pub"
    junk.write_text("junk")
    with pytest.raises(BundleError, match="not a PEM public key"):
        verify(bundle, junk)
    # The private key where the public one belongs: refused, and its bytes are not echoed.
    with pytest.raises(BundleError) as e:
        verify(bundle, priv)
    assert priv.read_text().splitlines()[1] not in str(e.value)


def test_a_broken_bundle_is_never_signed(bundle, keys):
    (bundle / "classifier.npz").write_bytes(b"tampered")
    with pytest.raises(BundleError, match=r"classifier\.npz"):
        sign_bundle(bundle, keys[0])
    assert not (bundle / SIGNATURE_FILE).exists()


def test_cli_keygen_sign_verify_round_trip(bundle, tmp_path, capsys):
    priv, pub = tmp_path / "cli.key", tmp_path / "cli.pub"
    assert main(["bundle", "keygen", "--private-key", str(priv), "--public-key", str(pub)]) == 0
    assert main(["bundle", "verify", str(bundle), "--public-key", str(pub)]) == 2
    assert "no signature.json" in capsys.readouterr().err
    assert main(["bundle", "sign", str(bundle), "--private-key", str(priv)]) == 0
    assert main(["bundle", "verify", str(bundle), "--public-key", str(pub)]) == 0
    assert "verified" in capsys.readouterr().out
    # Keys are never overwritten: keygen again on the same paths fails with exit code 2.
    assert main(["bundle", "keygen", "--private-key", str(priv), "--public-key", str(pub)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_sidecar_with_a_public_key_refuses_an_unsigned_bundle(sidecar_factory, keys):
    # sidecar_factory serves the shared, unsigned bundle_dir.
    with pytest.raises(BundleError, match=r"no signature\.json"):
        sidecar_factory(bundle_public_key=keys[1])


def test_sidecar_with_a_public_key_serves_a_signed_bundle(bundle, keys):
    from silentwatch.monitor.config import load_settings
    from silentwatch.monitor.serving.server import Sidecar

    sign_bundle(bundle, keys[0])
    settings = load_settings(bundle=bundle, port=0, metrics_port=0, bundle_public_key=keys[1])
    sc = Sidecar(settings)  # verified in __post_init__; not started (no ports needed)
    assert sc.bundle.sha256 == json.loads((bundle / SIGNATURE_FILE).read_text())["signed"]
