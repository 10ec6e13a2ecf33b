"""RFC 3161 trusted timestamp of ``manifest.json`` (rfc3161-client), as ``manifest.tsr``.

The request carries the SHA-256 of the exact bytes of manifest.json, a nonce, and asks for the
authority's certificate. The answer is checked before the pack is published (status granted,
nonce, message imprint, signature chaining to ``timestamp_ca_bundle``, the certificate's critical
``timeStamping`` key usage) and stored unchanged (a DER ``TimeStampResp``), so it can be checked
again with other tools::

    openssl ts -verify -data manifest.json -in manifest.tsr -CAfile tsa-ca.pem

The roots it was checked against travel with the pack as ``tsa-ca.pem`` (listed and hashed in
manifest.json); ``verify`` uses them unless the verifier names its own.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography import x509
from rfc3161_client import (HashAlgorithm, TimestampRequestBuilder, VerificationError,
                            VerifierBuilder, decode_timestamp_response)

from .options import PackError

TOKEN_FILE = "manifest.tsr"
CA_FILE = "tsa-ca.pem"


def load_roots(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValueError(f"{what} holds no PEM certificate ({exc})") from None
    return certs


def _verifier(roots: list[x509.Certificate], nonce: int | None = None):
    builder = VerifierBuilder()
    for cert in roots:
        builder = builder.add_root_certificate(cert)
    if nonce is not None:
        builder = builder.nonce(nonce)
    return builder.build()


def request_timestamp(data: bytes, url: str, ca_pem: bytes, timeout: float = 30.0) -> bytes:
    """The authority's DER answer for ``data``, checked; raises ``PackError`` when it fails."""
    roots = load_roots(ca_pem, "timestamp_ca_bundle")
    req = (TimestampRequestBuilder().data(data).hash_algorithm(HashAlgorithm.SHA256)
           .nonce(nonce=True).cert_request(cert_request=True).build())
    try:
        resp = requests.post(url, data=req.as_bytes(), timeout=timeout,
                             headers={"Content-Type": "application/timestamp-query",
                                      "Accept": "application/timestamp-reply"})
    except requests.RequestException as exc:
        raise PackError(f"timestamp authority {url}: {type(exc).__name__}: {exc}") from None
    if resp.status_code != 200:
        raise PackError(f"timestamp authority {url}: HTTP {resp.status_code}")
    try:
        tsr = decode_timestamp_response(resp.content)
        _verifier(roots, req.nonce).verify_message(tsr, data)
    except (ValueError, VerificationError) as exc:
        raise PackError(f"timestamp authority {url}: the answer does not verify: {exc}") from None
    return resp.content


@dataclass(frozen=True)
class TimestampResult:
    ok: bool
    detail: str
    gen_time: dt.datetime | None = None


def check(data: bytes, token: bytes, ca_pem: bytes, roots_from: str) -> TimestampResult:
    try:
        roots = load_roots(ca_pem, roots_from)
        tsr = decode_timestamp_response(token)
    except ValueError as exc:
        return TimestampResult(False, f"{TOKEN_FILE} or {roots_from} is not readable: {exc}")
    try:
        _verifier(roots).verify_message(tsr, data)
    except (ValueError, VerificationError) as exc:
        return TimestampResult(False, f"RFC 3161 timestamp does not verify against {roots_from}: "
                                      f"{exc}")
    gen = tsr.tst_info.gen_time
    if gen.tzinfo is None:
        gen = gen.replace(tzinfo=dt.timezone.utc)
    signer = _signer_name(tsr)
    return TimestampResult(True, f"RFC 3161 timestamp {gen:%Y-%m-%d %H:%M:%S} UTC of manifest.json "
                                 f"by {signer}, verified against {roots_from}", gen)


def _signer_name(tsr) -> str:
    try:
        certs = [x509.load_der_x509_certificate(c) for c in tsr.signed_data.certificates]
        info = next(iter(tsr.signed_data.signer_infos))
        for cert in certs:
            if cert.issuer == info.issuer and cert.serial_number == info.serial_number:
                return cert.subject.rfc4514_string()
    except Exception:  # noqa: BLE001 - only a label
        pass
    return "the authority"


def read_bundle(path: Path) -> bytes:
    return Path(path).read_bytes()
