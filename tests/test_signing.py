"""Integrity beyond hashes: Ed25519 signature of the manifest, PAdES signature of the PDF, and an
RFC 3161 timestamp from a local ``openssl ts`` authority — and verify's tamper tests: a byte
changed, a re-hashed manifest, a broken chain, a wrong signature, a removed signature."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from weasyprint import HTML

from collector.config import Secret
from collector.errors import ConfigError
from evidence_factory import make_evidence
from reports import pack as pack_module
from reports.manifest import annex_sha256, verify_ok, verify_pack
from reports.options import PackError
from reports.pack import write_pack

UTC = dt.timezone.utc
OPENSSL = shutil.which("openssl")


# --- key material -------------------------------------------------------------------------------

def pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def certificate(subject: str, key, issuer_key=None, issuer=None, *, ca=False, eku=None):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "accessproof tests")])
    now = dt.datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=True, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=True)
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("pack", "other"):
        key = ed25519.Ed25519PrivateKey.generate()
        (d / f"{name}.pem").write_bytes(pem_private(key))
        out[name] = Secret(f"file:{d / f'{name}.pem'}", d)
        out[f"{name}_public"] = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    # the PDF signer: a throwaway self-signed certificate
    pdf_key = ec.generate_private_key(ec.SECP256R1())
    pdf_cert = certificate("Compliance Team, Northwind Traders", pdf_key)
    (d / "pdf.key").write_bytes(pem_private(pdf_key))
    (d / "pdf.pem").write_bytes(pdf_cert.public_bytes(serialization.Encoding.PEM))
    out["pdf_key"] = Secret(f"file:{d / 'pdf.key'}", d)
    out["pdf_cert"] = Secret("file:pdf.pem", d)               # relative to the config file
    out["pdf_cert_obj"] = pdf_cert
    rsa_like = ec.generate_private_key(ec.SECP256R1())         # not an Ed25519 key
    (d / "ec.pem").write_bytes(pem_private(rsa_like))
    out["ec"] = Secret(f"file:{d / 'ec.pem'}", d)
    out["dir"] = d
    return out


@pytest.fixture(scope="module")
def small_pdf():
    """A real (tiny) WeasyPrint PDF: these tests are about signatures, not the report's layout."""
    return HTML(string="<h1>CC6.2 evidence</h1><p>report</p>").write_pdf()


@pytest.fixture
def stub_pdf(monkeypatch, small_pdf):
    monkeypatch.setattr(pack_module, "render_pdf", lambda html: small_pdf)


def by_name(checks):
    return {c.name: c for c in checks}


def rehash(pack_dir: Path, rel: str) -> None:
    """What an attacker with write access does after editing a file: fix the manifest."""
    manifest = json.loads((pack_dir / "manifest.json").read_text())
    manifest["files"][rel] = hashlib.sha256((pack_dir / rel).read_bytes()).hexdigest()
    manifest["annex_sha256"] = annex_sha256(manifest["files"])
    (pack_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def two_packs(root: Path, options: dict, second_options: dict | None = None):
    ev = make_evidence(store_root=root)
    first = write_pack(ev, root, options=options)
    ev.generated_at = dt.datetime(2026, 4, 3, 6, 0, tzinfo=UTC)
    second = write_pack(ev, root, options=second_options if second_options is not None
                        else options)
    return first, second


# --- Ed25519 --------------------------------------------------------------------------------------

def test_signed_pack_verifies_and_names_its_key(tmp_path, keys, stub_pdf):
    first, second = two_packs(tmp_path, {"signing_key": keys["pack"]})
    manifest = json.loads((first / "manifest.json").read_text())
    fingerprint = manifest["integrity"]["signature"]["public_key_sha256"]
    sig = json.loads((first / "manifest.sig").read_text())
    assert sig["public_key_sha256"] == fingerprint and sig["algorithm"] == "Ed25519"
    assert "manifest.sig" not in manifest["files"]
    checks = by_name(verify_pack(first))
    assert verify_ok(list(checks.values())), checks
    assert fingerprint in checks["signature"].detail and "not pinned" in checks["signature"].detail
    checks = by_name(verify_pack(second))
    assert checks["signature"].ok and "previous pack's key" in checks["signature"].detail
    pinned = by_name(verify_pack(second, public_key=keys["pack_public"]))
    assert pinned["signature"].ok and "(the given key)" in pinned["signature"].detail
    assert not by_name(verify_pack(second, public_key=keys["other_public"]))["signature"].ok
    # the report says so
    assert fingerprint in (first / "report.html").read_text()


def test_tampering_is_caught(tmp_path, keys, stub_pdf):
    """The four tamper cases of the issue, each on a fresh copy of a signed, chained store."""
    pristine = tmp_path / "pristine"
    first, second = two_packs(pristine, {"signing_key": keys["pack"]})

    def fresh():
        root = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(pristine, root)
        return (root / first.relative_to(pristine), root / second.relative_to(pristine))

    # 1. a byte changed
    a, _ = fresh()
    data = bytearray((a / "exceptions.csv").read_bytes())
    data[10] ^= 1
    (a / "exceptions.csv").write_bytes(bytes(data))
    checks = by_name(verify_pack(a))
    assert not checks["files"].ok and checks["signature"].ok
    assert not verify_ok(list(checks.values()))

    # 2. a re-hashed manifest: consistent hashes, but no longer what was signed
    a, b = fresh()
    (a / "exceptions.csv").write_text((a / "exceptions.csv").read_text()
                                      .replace("disabled_late", "disabled_ok__"))
    rehash(a, "exceptions.csv")
    checks = by_name(verify_pack(a))
    assert checks["files"].ok
    assert not checks["signature"].ok and "does not verify" in checks["signature"].detail
    assert not by_name(verify_pack(b))["chain"].ok           # and the next pack's chain

    # 3. a broken chain: the first pack's manifest edited, signature and all
    a, b = fresh()
    manifest = json.loads((a / "manifest.json").read_text())
    manifest["status"] = "complete"
    (a / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    checks = by_name(verify_pack(b))
    assert not checks["chain"].ok and "SHA-256" in checks["chain"].detail
    assert not verify_ok(verify_pack(a))

    # 4a. a wrong signature: another key's signature of the same manifest
    a, _ = fresh()
    other = serialization.load_pem_private_key(keys["other"].path.read_bytes(), None)
    from reports import signing
    (a / "manifest.sig").write_bytes(signing.sign((a / "manifest.json").read_bytes(), other))
    checks = by_name(verify_pack(a))
    assert not checks["signature"].ok and "names key" in checks["signature"].detail

    # 4b. a corrupted signature
    a, _ = fresh()
    sig = json.loads((a / "manifest.sig").read_text())
    raw = bytearray(__import__("base64").b64decode(sig["signature"]))
    raw[0] ^= 1
    sig["signature"] = __import__("base64").b64encode(bytes(raw)).decode()
    (a / "manifest.sig").write_text(json.dumps(sig))
    assert not by_name(verify_pack(a))["signature"].ok

    # 4c. re-signed with the attacker's own key, fingerprint updated: the key changed since
    # the previous pack (and does not match a pinned key)
    a, b = fresh()
    (b / "results.json").write_text((b / "results.json").read_text().replace("fail", "pass"))
    rehash(b, "results.json")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["integrity"]["signature"] = signing.declaration(other)
    (b / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (b / "manifest.sig").write_bytes(signing.sign((b / "manifest.json").read_bytes(), other))
    checks = by_name(verify_pack(b))
    assert checks["files"].ok and checks["chain"].ok
    assert not checks["signature"].ok and "previous pack" in checks["signature"].detail
    assert not by_name(verify_pack(b, public_key=keys["pack_public"]))["signature"].ok

    # 5. the signature removed, manifest re-hashed without it
    a, b = fresh()
    (b / "manifest.sig").unlink()
    manifest = json.loads((b / "manifest.json").read_text())
    del manifest["integrity"]["signature"]
    (b / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    checks = by_name(verify_pack(b))
    assert not checks["signature"].ok and "previous pack was" in checks["signature"].detail
    # ...and a pack without its manifest.sig, manifest untouched
    a, _ = fresh()
    (a / "manifest.sig").unlink()
    assert "missing" in by_name(verify_pack(a))["signature"].detail


def test_cli_verify_fails_on_a_bad_signature(tmp_path, keys, stub_pdf):
    from click.testing import CliRunner

    from collector.cli import cli
    first, _ = two_packs(tmp_path, {"signing_key": keys["pack"]})
    result = CliRunner().invoke(cli, ["verify", str(first)])
    assert result.exit_code == 0, result.output
    assert "signature" in result.output and "timestamp" in result.output
    (first / "manifest.sig").write_text("{}")
    result = CliRunner().invoke(cli, ["verify", str(first)])
    assert result.exit_code == 1 and "FAIL" in result.output


def test_a_key_that_is_not_ed25519_is_refused(tmp_path, keys, stub_pdf):
    with pytest.raises(ConfigError, match=r"\[pack\] key 'signing_key'.*Ed25519"):
        write_pack(make_evidence(), tmp_path, options={"signing_key": keys["ec"]})
    assert not list(tmp_path.glob("packs/*/*"))


# --- PAdES ----------------------------------------------------------------------------------------

def test_pdf_is_signed_so_a_reader_shows_it(tmp_path, keys, stub_pdf):
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko.sign.validation.status import SignatureCoverageLevel
    from pyhanko_certvalidator import ValidationContext
    from pyhanko.keys import load_cert_from_pemder

    out = write_pack(make_evidence(), tmp_path, options={
        "pdf_signing_key": keys["pdf_key"], "pdf_signing_certificate": keys["pdf_cert"],
        "entity": "Northwind Traders"})
    pdf = (out / "report.pdf").read_bytes()
    reader = PdfFileReader(io.BytesIO(pdf))
    [sig] = reader.embedded_signatures
    trust = load_cert_from_pemder(str(keys["dir"] / "pdf.pem"))
    status = validate_pdf_signature(sig, ValidationContext(trust_roots=[trust]))
    assert status.bottom_line and status.intact and status.valid and status.trusted
    assert status.coverage == SignatureCoverageLevel.ENTIRE_FILE
    assert sig.sig_object["/SubFilter"] == "/ETSI.CAdES.detached"      # PAdES
    assert "Northwind" in str(sig.sig_object.get("/Location"))
    manifest = json.loads((out / "manifest.json").read_text())
    declared = manifest["integrity"]["pdf_signature"]
    assert declared["certificate_sha256"] == hashlib.sha256(
        keys["pdf_cert_obj"].public_bytes(serialization.Encoding.DER)).hexdigest()
    checks = by_name(verify_pack(out))
    assert verify_ok(list(checks.values())), checks
    assert "intact, covers the whole file" in checks["pdf-signature"].detail

    # content appended after signing (an incremental update), manifest re-hashed
    (out / "report.pdf").write_bytes(pdf + b"\n% appended\n")
    rehash(out, "report.pdf")
    checks = by_name(verify_pack(out))
    assert checks["files"].ok and not checks["pdf-signature"].ok


def test_pdf_certificate_must_match_its_key(tmp_path, keys, stub_pdf):
    with pytest.raises(ConfigError, match="pdf_signing_certificate"):
        write_pack(make_evidence(), tmp_path, options={
            "pdf_signing_key": keys["ec"], "pdf_signing_certificate": keys["pdf_cert"]})


# --- RFC 3161 against a local openssl ts authority ----------------------------------------------

TSA_CONFIG = """
[ tsa ]
default_tsa = tsa_config1
[ tsa_config1 ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.55555.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


class OpensslTSA(ThreadingHTTPServer):
    """An RFC 3161 authority on 127.0.0.1: each POSTed query answered by ``openssl ts -reply``."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.requests = 0
        self.lock = threading.Lock()
        tsa = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with tsa.lock:
                    tsa.requests += 1
                    query = tsa.directory / "query.tsq"
                    reply = tsa.directory / "reply.tsr"
                    query.write_bytes(body)
                    proc = subprocess.run(
                        [OPENSSL, "ts", "-reply", "-config", str(tsa.directory / "tsa.cnf"),
                         "-queryfile", str(query), "-out", str(reply)],
                        capture_output=True)
                    data = reply.read_bytes() if proc.returncode == 0 else b""
                self.send_response(200 if data else 500)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/tsa"


@pytest.fixture(scope="module")
def tsa(tmp_path_factory):
    if OPENSSL is None:
        pytest.skip("openssl is not installed: no local RFC 3161 authority to test against")
    d = tmp_path_factory.mktemp("tsa")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("accessproof test TSA root", ca_key, ca=True)
    tsa_key = ec.generate_private_key(ec.SECP256R1())
    tsa_cert = certificate("accessproof test TSA", tsa_key, ca_key, ca,
                           eku=[ExtendedKeyUsageOID.TIME_STAMPING])
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "tsa.pem").write_bytes(tsa_cert.public_bytes(serialization.Encoding.PEM))
    (d / "tsa.key").write_bytes(pem_private(tsa_key))
    (d / "serial").write_text("01\n")
    (d / "tsa.cnf").write_text(TSA_CONFIG.format(dir=d))
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = certificate("some other root", other_key, ca=True)
    (d / "other-ca.pem").write_bytes(other.public_bytes(serialization.Encoding.PEM))
    server = OpensslTSA(d)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_timestamped_pack_verifies(tmp_path, tsa, keys, stub_pdf):
    options = {"timestamp_url": tsa.url,
               "timestamp_ca_bundle": Secret("file:ca.pem", tsa.directory),
               "signing_key": keys["pack"]}
    out = write_pack(make_evidence(), tmp_path, options=options)
    assert (out / "manifest.tsr").is_file() and (out / "tsa-ca.pem").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["integrity"]["timestamp"]["authority"] == tsa.url
    assert "tsa-ca.pem" in manifest["files"] and "manifest.tsr" not in manifest["files"]
    checks = by_name(verify_pack(out))
    assert verify_ok(list(checks.values())), checks
    assert "RFC 3161 timestamp" in checks["timestamp"].detail
    assert "accessproof test TSA" in checks["timestamp"].detail
    # the command the report prints works with OpenSSL alone
    proc = subprocess.run([OPENSSL, "ts", "-verify", "-data", "manifest.json", "-in",
                           "manifest.tsr", "-CAfile", "tsa-ca.pem"], cwd=out,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr
    # against roots the verifier brings: its own TSA root passes, another one fails
    assert by_name(verify_pack(out, tsa_roots=tsa.directory / "ca.pem"))["timestamp"].ok
    assert not by_name(verify_pack(out, tsa_roots=tsa.directory / "other-ca.pem"))[
        "timestamp"].ok

    # a token for other data (the manifest changed after timestamping)
    manifest["status"] = "complete"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    checks = by_name(verify_pack(out))
    assert not checks["timestamp"].ok and not checks["signature"].ok
    # the token removed
    (out / "manifest.tsr").unlink()
    assert "missing" in by_name(verify_pack(out))["timestamp"].detail


def test_unreachable_or_untrusted_authority_writes_no_pack(tmp_path, tsa, stub_pdf):
    with pytest.raises(PackError, match="timestamp authority") as err:
        write_pack(make_evidence(), tmp_path, options={
            "timestamp_url": "http://127.0.0.1:9/tsa", "timestamp_timeout": 2,
            "timestamp_ca_bundle": str(tsa.directory / "ca.pem")})
    assert err.value.exit_code == 2
    with pytest.raises(PackError, match="does not verify"):
        write_pack(make_evidence(), tmp_path, options={
            "timestamp_url": tsa.url, "timestamp_ca_bundle": str(tsa.directory / "other-ca.pem")})
    assert not list(tmp_path.glob("packs/*/*"))
    assert list((tmp_path / ".tmp").iterdir()) == []
