"""Ed25519 signature of ``manifest.json``, written beside it as ``manifest.sig``.

``manifest.json`` names the signing key by its fingerprint (SHA-256 of the raw 32-byte public
key, hex) before it is signed, so the fingerprint is itself covered by the signature.
``manifest.sig`` is JSON::

    {"algorithm": "Ed25519", "signed_file": "manifest.json",
     "public_key": "<raw public key, base64>", "public_key_sha256": "<hex>",
     "signature": "<64-byte signature over the exact bytes of manifest.json, base64>"}

Anyone can check a signature against the public key it carries; that proves the pack is whole
since it was signed, not *who* signed it. ``verify`` therefore also compares the key with a key
the verifier pins (``public_key``) or, failing that, with the key that signed the previous pack
of the chain, and reports which.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from collector.errors import ConfigError

SIGNATURE_FILE = "manifest.sig"
ALGORITHM = "Ed25519"


def fingerprint(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_private_key(pem: bytes, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a readable PEM private key ({exc})", section="pack",
                          key="signing_key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"must be an Ed25519 key, not {type(key).__name__.lstrip('_')}",
                          section="pack", key="signing_key")
    return key


def load_public_key(data: bytes | str | Path) -> Ed25519PublicKey:
    """A pinned key: PEM (public or private key) file or bytes, or a raw key in base64."""
    if isinstance(data, Path):
        data = data.read_bytes()
    if isinstance(data, str):
        data = data.encode()
    data = data.strip()
    if data.startswith(b"-----BEGIN"):
        if b"PRIVATE KEY" in data:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    else:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(data, validate=True))
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 key")
    return key


def declaration(key: Ed25519PrivateKey) -> dict[str, str]:
    """What manifest.json says about its signature."""
    return {"algorithm": ALGORITHM, "file": SIGNATURE_FILE,
            "public_key_sha256": fingerprint(key.public_key())}


def sign(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    doc = {"algorithm": ALGORITHM, "signed_file": "manifest.json",
           "public_key": base64.b64encode(raw).decode(),
           "public_key_sha256": fingerprint(public),
           "signature": base64.b64encode(key.sign(manifest_bytes)).decode()}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class SignatureResult:
    ok: bool
    detail: str
    fingerprint: str | None = None


def check(manifest_bytes: bytes, sig_bytes: bytes, expected_fingerprint: str) -> SignatureResult:
    """The signature is valid and made by the key manifest.json names."""
    try:
        doc = json.loads(sig_bytes)
        if doc.get("algorithm") != ALGORITHM:
            return SignatureResult(False, f"{SIGNATURE_FILE}: algorithm {doc.get('algorithm')!r} "
                                          f"is not {ALGORITHM}")
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(doc["public_key"],
                                                                     validate=True))
        signature = base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return SignatureResult(False, f"{SIGNATURE_FILE} is not readable: {exc}")
    fp = fingerprint(public)
    if fp != expected_fingerprint:
        return SignatureResult(False, f"{SIGNATURE_FILE} carries key {fp[:16]}…, but "
                                      f"manifest.json names key {str(expected_fingerprint)[:16]}…",
                               fp)
    try:
        public.verify(signature, manifest_bytes)
    except InvalidSignature:
        return SignatureResult(False, f"Ed25519 signature of manifest.json does not verify with "
                                      f"key {fp[:16]}…: manifest.json was changed after signing, "
                                      "or the signature is not for it", fp)
    return SignatureResult(True, f"Ed25519 signature of manifest.json verifies with key {fp}", fp)
