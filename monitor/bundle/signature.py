"""Optional Ed25519 signatures of bundles.

A bundle's ``manifest.json`` pins every payload file by sha256, so the sha256 of
``manifest.json`` (``LoadedBundle.sha256``) identifies the whole bundle. A signature covers
that one hash. ``signature.json`` beside the manifest::

    {"algorithm": "ed25519",
     "signed": "<sha256 hex of manifest.json>",
     "signature": "<base64 of Ed25519(private, MESSAGE_PREFIX + signed)>",
     "key_fingerprint": "<sha256 hex of the raw public key, first 16>"}

``MESSAGE_PREFIX`` separates this use of the key from any other: a bundle signature can
never be replayed as a signature of something else. ``key_fingerprint`` is informational
(it says which key signed when verification fails); it is not trusted.

Verification takes the hash of the manifest bytes the loader actually parsed, so a manifest
changed between loading and verifying cannot slip through.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from silentwatch.monitor.bundle.io import BundleError, load_bundle

SIGNATURE_FILE = "signature.json"
ALGORITHM = "ed25519"
MESSAGE_PREFIX = b"silentwatch bundle signature v1\n"


def _message(signed: str) -> bytes:
    return MESSAGE_PREFIX + signed.encode("ascii")


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite a key; the mode is set at creation so a private key is never
    # readable by others, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate_keypair(
    private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]
) -> str:
    """Write a new Ed25519 key pair as PEM: private (PKCS#8, mode 0600) and public.

    Returns
    -------
    str
        The new key's fingerprint (:func:`key_fingerprint`).

    Raises
    ------
    BundleError
        Either file exists already (keys are never overwritten) or cannot be written.
    """
    priv, pub = Path(private_path), Path(public_path)
    for p in (priv, pub):
        if p.exists():
            raise BundleError(f"{p} exists; refusing to overwrite a key (move it or pick a path)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        _write_new(priv, private_pem, 0o600)
        _write_new(pub, public_pem, 0o644)
    except OSError as exc:
        priv.unlink(missing_ok=True)  # no half pair: a private key without its public one
        raise BundleError(f"cannot write the key pair: {exc.strerror} ({exc.filename})") from None
    return key_fingerprint(key.public_key())


def _kind(key: object) -> str:
    # "an RSA key", for messages: the algorithm only, nothing of the key itself.
    for cls, name in (
        (rsa.RSAPrivateKey, "RSA"),
        (rsa.RSAPublicKey, "RSA"),
        (ec.EllipticCurvePrivateKey, "EC"),
        (ec.EllipticCurvePublicKey, "EC"),
    ):
        if isinstance(key, cls):
            return f"an {name} key"
    return f"a {type(key).__name__} key"


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {what} {path}: {exc.strerror}") from None


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """An unencrypted PEM Ed25519 private key; :class:`BundleError` names what is wrong."""
    path = Path(path)
    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise BundleError(f"private key {path} is encrypted; give an unencrypted one") from None
    except (ValueError, UnsupportedAlgorithm):
        # The parser's message is not repeated: never risk echoing key bytes.
        raise BundleError(
            f"private key {path} is not a PEM private key; create one with "
            "`silentwatch bundle keygen`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(
            f"private key {path} is {_kind(key)}, not Ed25519; create one with "
            "`silentwatch bundle keygen`"
        )
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """A PEM Ed25519 public key; :class:`BundleError` names what is wrong."""
    path = Path(path)
    data = _read_key_file(path, "bundle_public_key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise BundleError(
            f"bundle_public_key {path} is not a PEM public key ('-----BEGIN PUBLIC KEY-----'); "
            "use the public half written by `silentwatch bundle keygen`"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(
            f"bundle_public_key {path} is {_kind(key)}, not Ed25519; use the public half "
            "written by `silentwatch bundle keygen`"
        )
    return key


def sign_bundle(
    bundle_dir: str | os.PathLike[str], private_key_path: str | os.PathLike[str]
) -> Path:
    """Verify the bundle, then write its ``signature.json`` (replacing an older one).

    Returns
    -------
    pathlib.Path
        The signature file.

    Raises
    ------
    BundleError
        The bundle does not load (it is never signed then) or the key is unusable.
    """
    key = load_private_key(private_key_path)
    bundle = load_bundle(bundle_dir)  # sign only what the sidecar would accept
    doc = {
        "algorithm": ALGORITHM,
        "signed": bundle.sha256,
        "signature": base64.b64encode(key.sign(_message(bundle.sha256))).decode("ascii"),
        "key_fingerprint": key_fingerprint(key.public_key()),
    }
    target = bundle.path / SIGNATURE_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{SIGNATURE_FILE}.", dir=bundle.path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=2) + "\n")
        os.chmod(tmp, 0o644)  # public data, read by a sidecar that may run as another user
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _read_signature(path: Path) -> tuple[str, bytes, str | None]:
    sig_path = path / SIGNATURE_FILE
    try:
        raw = sig_path.read_bytes()
    except FileNotFoundError:
        raise BundleError(
            f"bundle {path} has no {SIGNATURE_FILE}, and bundle_public_key requires one: sign it "
            f"with `silentwatch bundle sign {path} --private-key KEY`, or unset "
            "bundle_public_key"
        ) from None
    except OSError as exc:
        raise BundleError(f"cannot read {sig_path}: {exc.strerror}") from None
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        raise BundleError(f"{sig_path} is malformed: not a JSON object; re-sign the bundle")
    algorithm, signed, signature = doc.get("algorithm"), doc.get("signed"), doc.get("signature")
    if algorithm != ALGORITHM:
        raise BundleError(
            f"{sig_path} is malformed: algorithm {algorithm!r}, expected {ALGORITHM!r}"
        )
    if (
        not isinstance(signed, str)
        or len(signed) != 64
        or any(c not in "0123456789abcdef" for c in signed)
    ):
        raise BundleError(f"{sig_path} is malformed: 'signed' is not a sha256 hex digest")
    try:
        sig = base64.b64decode(signature if isinstance(signature, str) else "", validate=True)
    except (binascii.Error, ValueError):
        sig = b""
    if len(sig) != 64:
        raise BundleError(
            f"{sig_path} is malformed: 'signature' is not a base64 Ed25519 signature (64 bytes)"
        )
    fp = doc.get("key_fingerprint")
    return signed, sig, fp if isinstance(fp, str) else None


def verify_bundle_signature(
    bundle_dir: str | os.PathLike[str],
    bundle_sha256: str,
    public_key_path: str | os.PathLike[str],
) -> str:
    """Check ``signature.json`` against the manifest hash and the trusted public key.

    Parameters
    ----------
    bundle_dir
        The bundle directory.
    bundle_sha256
        sha256 hex of the ``manifest.json`` bytes that were loaded (``LoadedBundle.sha256``).
    public_key_path
        PEM Ed25519 public key (the ``bundle_public_key`` setting).

    Returns
    -------
    str
        The verifying key's fingerprint.

    Raises
    ------
    BundleError
        Unreadable or non-Ed25519 key; no, unreadable or malformed ``signature.json``; a
        signature of a different manifest; or a signature that does not verify.
    """
    path = Path(bundle_dir)
    key = load_public_key(public_key_path)
    signed, sig, claimed = _read_signature(path)
    if signed != bundle_sha256:
        raise BundleError(
            f"{path / SIGNATURE_FILE} signed a different manifest (sha256 {signed[:16]}...) "
            f"than the bundle's manifest.json ({bundle_sha256[:16]}...): the bundle changed "
            "after it was signed; restore it or re-sign it"
        )
    fp = key_fingerprint(key)
    try:
        key.verify(sig, _message(signed))
    except InvalidSignature:
        by = f" (it claims key {claimed})" if claimed and claimed != fp else ""
        raise BundleError(
            f"{path / SIGNATURE_FILE} has a bad signature: it does not verify with "
            f"bundle_public_key {public_key_path} (key {fp}){by}; the bundle was signed by "
            "another key or the signature was altered"
        ) from None
    return fp
