"""PAdES signature of report.pdf (pyhanko), so that a PDF reader shows who signed the report.

The signature is an incremental update covering the whole file as WeasyPrint wrote it (PAdES
baseline B-B, SHA-256, the signer's certificate and chain embedded). The signed PDF is what the
manifest hashes, so ``verify`` catches any change in its "files" check; its "pdf-signature"
check also validates the signature itself: intact, covering the entire file, and made with the
certificate manifest.json records.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from collector.errors import ConfigError

FIELD_NAME = "accessproof-report"


@dataclass(frozen=True)
class PdfSigner:
    signer: object              # pyhanko SimpleSigner
    certificate_sha256: str     # of the DER certificate
    subject: str


def load_signer(key_pem: bytes, cert_path: Path, passphrase: bytes | None) -> PdfSigner:
    from pyhanko.keys import load_certs_from_pemder_data, load_private_key_from_pemder_data
    from pyhanko.sign.signers import SimpleSigner
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    try:
        key = load_private_key_from_pemder_data(key_pem, passphrase=passphrase)
    except Exception as exc:  # noqa: BLE001 - pyhanko/asn1crypto raise several kinds
        raise ConfigError(f"not a readable private key ({type(exc).__name__}: {exc})",
                          section="pack", key="pdf_signing_key") from None
    try:
        certs = list(load_certs_from_pemder_data(Path(cert_path).read_bytes()))
    except OSError as exc:
        raise ConfigError(f"cannot read {cert_path}: {exc.strerror}", section="pack",
                          key="pdf_signing_certificate") from None
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{cert_path} holds no readable certificate ({exc})", section="pack",
                          key="pdf_signing_certificate") from None
    if not certs:
        raise ConfigError(f"{cert_path} holds no certificate", section="pack",
                          key="pdf_signing_certificate")
    cert, chain = certs[0], certs[1:]
    if not _key_matches(key_pem, passphrase, cert.dump()):
        raise ConfigError("the certificate does not belong to pdf_signing_key", section="pack",
                          key="pdf_signing_certificate")
    signer = SimpleSigner(signing_cert=cert, signing_key=key,
                          cert_registry=SimpleCertificateStore.from_certs(chain))
    return PdfSigner(signer, hashlib.sha256(cert.dump()).hexdigest(), subject_name(cert))


def subject_name(cert) -> str:
    """“Common Name (Organization)”, as a reader shows a signer; the full subject otherwise."""
    native = cert.subject.native
    cn, org = native.get("common_name"), native.get("organization_name")
    if isinstance(cn, list):
        cn = cn[0]
    if isinstance(org, list):
        org = org[0]
    if cn:
        return f"{cn} ({org})" if org and org not in cn else str(cn)
    return cert.subject.human_friendly


def _key_matches(key_pem: bytes, passphrase: bytes | None, cert_der: bytes) -> bool:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        key = (serialization.load_pem_private_key(key_pem, passphrase)
               if b"-----BEGIN" in key_pem else
               serialization.load_der_private_key(key_pem, passphrase))
        cert = x509.load_der_x509_certificate(cert_der)
    except (ValueError, TypeError):
        return True       # not comparable here; pyhanko loaded both, signing will tell
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


def sign_pdf(pdf: bytes, signer: PdfSigner, *, reason: str, location: str | None = None) -> bytes:
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers

    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    meta = signers.PdfSignatureMetadata(
        field_name=FIELD_NAME, md_algorithm="sha256", reason=reason, location=location,
        subfilter=fields.SigSeedSubFilter.PADES)
    out = signers.sign_pdf(writer, meta, signer=signer.signer)
    return out.getvalue()


@dataclass(frozen=True)
class PdfSignatureResult:
    ok: bool
    detail: str


def check(pdf: bytes, expected_certificate_sha256: str | None,
          trust_roots: list | None = None) -> PdfSignatureResult:
    """Validate report.pdf's signature: intact, whole-file, by the recorded certificate."""
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation.errors import SignatureValidationError
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko_certvalidator import ValidationContext
    from pyhanko.sign.validation.status import SignatureCoverageLevel

    try:
        reader = PdfFileReader(io.BytesIO(pdf), strict=False)
        sigs = reader.embedded_signatures
    except Exception as exc:  # noqa: BLE001 - a damaged PDF
        return PdfSignatureResult(False, f"report.pdf cannot be read: {exc}")
    if len(sigs) != 1:
        return PdfSignatureResult(False, f"report.pdf has {len(sigs)} signatures, expected 1")
    sig = sigs[0]
    cert_sha = hashlib.sha256(sig.signer_cert.dump()).hexdigest()
    context = ValidationContext(trust_roots=trust_roots or [sig.signer_cert],
                                allow_fetching=False)
    try:
        status = validate_pdf_signature(sig, context)
    except (SignatureValidationError, ValueError) as exc:
        return PdfSignatureResult(False, f"report.pdf signature does not validate: {exc}")
    subject = subject_name(sig.signer_cert)
    if not status.intact or not status.valid:
        return PdfSignatureResult(False, f"report.pdf signature by {subject} is not intact: the "
                                         "signed bytes were changed")
    if status.coverage != SignatureCoverageLevel.ENTIRE_FILE:
        return PdfSignatureResult(False, f"report.pdf signature by {subject} does not cover the "
                                         f"whole file ({status.coverage.name}): content was "
                                         "added after signing")
    if expected_certificate_sha256 and cert_sha != expected_certificate_sha256:
        return PdfSignatureResult(False, f"report.pdf is signed by {subject} (certificate "
                                         f"{cert_sha[:16]}…), not by the certificate "
                                         "manifest.json records")
    trust = ("chains to the given trust roots" if trust_roots and status.trusted else
             "certificate as recorded in manifest.json; its trust is up to the reader"
             if not trust_roots else "does NOT chain to the given trust roots")
    ok = status.trusted if trust_roots else True
    return PdfSignatureResult(ok, f"PAdES signature of report.pdf by {subject}: intact, covers "
                                  f"the whole file; {trust}")
