"""The ``[pack]`` section of the configuration, as ``write_pack(..., options=config.pack)`` gets it.

Keys (all optional):

===========================  ==================================================================
``entity``                   name of the audited entity, printed on the cover and in the header
``paper``                    ``"letter"`` (default) or ``"a4"``
``signing_key``              ``file:``/``env:`` reference to an Ed25519 private key (PEM, PKCS#8);
                             signs ``manifest.json`` into ``manifest.sig``
``signing_key_passphrase``   reference to the key's passphrase, when it is encrypted
``pdf_signing_key``          reference to the PDF signer's private key (PEM): PAdES signature
``pdf_signing_certificate``  ``file:`` reference to the signer's certificate, PEM, followed by
                             any intermediate certificates
``pdf_signing_passphrase``   reference to the passphrase of ``pdf_signing_key``
``timestamp_url``            RFC 3161 time-stamping authority; the manifest is timestamped into
                             ``manifest.tsr``
``timestamp_ca_bundle``      ``file:`` reference (or absolute path) to the PEM root(s) the TSA's
                             certificate chains to; copied into the pack as ``tsa-ca.pem``
``timestamp_timeout``        seconds (default 30)
``sample_size``              a number for every population, or a table by population name with
                             an optional ``default`` (e.g. ``{ default = 25,
                             "deprovisioning-timely" = 40 }``); without it, the default table
``sample_seed``              text or integer; default: the pack id (unknown before the pack is
                             made, printed in it)
``zip``                      write ``<pack>.zip`` beside the pack directory (default true)
``index``                    rewrite ``<store>/packs/index.html`` after each pack (default true)
===========================  ==================================================================

Paths: ``file:PATH`` references resolve relative to the configuration file; a plain path must be
absolute. Secrets are read when the pack is written, never logged or recorded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.config import Secret
from collector.errors import AccessproofError, ConfigError

KNOWN_KEYS = (
    "entity", "paper", "signing_key", "signing_key_passphrase", "pdf_signing_key",
    "pdf_signing_certificate", "pdf_signing_passphrase", "timestamp_url",
    "timestamp_ca_bundle", "timestamp_timeout", "sample_size", "sample_seed", "zip", "index",
)
SECTION = "pack"


class PackError(AccessproofError):
    """An outside service the pack needs (the time-stamping authority) failed: exit status 2."""

    exit_code = 2


def _error(key: str, message: str) -> ConfigError:
    return ConfigError(message, section=SECTION, key=key)


def _path(value: Any, key: str) -> Path:
    if isinstance(value, Secret):
        if value.kind != "file":
            raise _error(key, "must be a file: reference (or an absolute path)")
        return value.path
    if isinstance(value, (str, os.PathLike)):
        path = Path(os.path.expanduser(str(value)))
        if not path.is_absolute():
            raise _error(key, f"'{value}' is relative: write file:{value} (relative to the "
                              "configuration file) or an absolute path")
        return path
    raise _error(key, "must be a file: reference or an absolute path")


def _secret_bytes(value: Any, key: str) -> bytes:
    """The bytes of a secret reference (a file is read as is, not stripped)."""
    if isinstance(value, Secret):
        if value.kind == "file":
            try:
                return value.path.read_bytes()
            except OSError as exc:
                raise _error(key, f"cannot read {value.path}: {exc.strerror}") from None
        return value.reveal().encode()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise _error(key, "must be a secret reference (file:PATH or env:NAME)")


@dataclass(frozen=True)
class PackOptions:
    entity: str | None = None
    paper: str = "letter"
    signing_key: Any = None
    signing_key_passphrase: Any = None
    pdf_signing_key: Any = None
    pdf_signing_certificate: Path | None = None
    pdf_signing_passphrase: Any = None
    timestamp_url: str | None = None
    timestamp_ca_bundle: Path | None = None
    timestamp_timeout: float = 30.0
    sample_size: int | dict[str, int] | None = None
    sample_seed: str | None = None
    zip: bool = True
    index: bool = True

    # --- secrets, read on demand ---
    def signing_key_pem(self) -> bytes:
        return _secret_bytes(self.signing_key, "signing_key")

    def signing_passphrase(self) -> bytes | None:
        if self.signing_key_passphrase is None:
            return None
        return _secret_bytes(self.signing_key_passphrase, "signing_key_passphrase").strip()

    def pdf_key_pem(self) -> bytes:
        return _secret_bytes(self.pdf_signing_key, "pdf_signing_key")

    def pdf_passphrase(self) -> bytes | None:
        if self.pdf_signing_passphrase is None:
            return None
        return _secret_bytes(self.pdf_signing_passphrase, "pdf_signing_passphrase").strip()


def _int(value: Any, key: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _error(key, f"must be a whole number of at least {minimum}")
    return value


def parse_options(raw: dict[str, Any] | PackOptions | None) -> PackOptions:
    """Validate ``Config.pack``; every error names ``[pack]`` and the key."""
    if raw is None:
        return PackOptions()
    if isinstance(raw, PackOptions):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError("must be a table", section=SECTION)
    unknown = sorted(set(raw) - set(KNOWN_KEYS))
    if unknown:
        raise _error(unknown[0], f"unknown key (known: {', '.join(KNOWN_KEYS)})")
    out: dict[str, Any] = {}

    if (entity := raw.get("entity")) is not None:
        if not isinstance(entity, str) or not entity.strip() or len(entity) > 200:
            raise _error("entity", "must be a name of 1 to 200 characters")
        out["entity"] = entity.strip()
    if (paper := raw.get("paper")) is not None:
        if not isinstance(paper, str) or paper.lower() not in ("letter", "a4"):
            raise _error("paper", "must be \"letter\" or \"a4\"")
        out["paper"] = paper.lower()

    for key in ("signing_key", "signing_key_passphrase", "pdf_signing_key",
                "pdf_signing_passphrase"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, (Secret, bytes)):
            raise _error(key, "must be a secret reference (file:PATH or env:NAME)")
        out[key] = value
    if raw.get("pdf_signing_certificate") is not None:
        out["pdf_signing_certificate"] = _path(raw["pdf_signing_certificate"],
                                               "pdf_signing_certificate")
    if ("pdf_signing_key" in out) != ("pdf_signing_certificate" in out):
        missing = "pdf_signing_certificate" if "pdf_signing_key" in out else "pdf_signing_key"
        raise _error(missing, "is required when the PDF is signed (pdf_signing_key and "
                              "pdf_signing_certificate go together)")
    if "signing_key_passphrase" in out and "signing_key" not in out:
        raise _error("signing_key_passphrase", "is set but signing_key is not")
    if "pdf_signing_passphrase" in out and "pdf_signing_key" not in out:
        raise _error("pdf_signing_passphrase", "is set but pdf_signing_key is not")

    if (url := raw.get("timestamp_url")) is not None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _error("timestamp_url", "must be an http:// or https:// URL")
        out["timestamp_url"] = url
        if raw.get("timestamp_ca_bundle") is None:
            raise _error("timestamp_ca_bundle", "is required with timestamp_url: the root "
                                                "certificate(s) the authority's certificate "
                                                "chains to, to check its answer")
    if raw.get("timestamp_ca_bundle") is not None:
        if "timestamp_url" not in out:
            raise _error("timestamp_ca_bundle", "is set but timestamp_url is not")
        out["timestamp_ca_bundle"] = _path(raw["timestamp_ca_bundle"], "timestamp_ca_bundle")
    if (timeout := raw.get("timestamp_timeout")) is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise _error("timestamp_timeout", "must be a positive number of seconds")
        out["timestamp_timeout"] = float(timeout)

    if (size := raw.get("sample_size")) is not None:
        if isinstance(size, dict):
            if not size:
                raise _error("sample_size", "is an empty table")
            out["sample_size"] = {str(k): _int(v, f"sample_size.{k}") for k, v in size.items()}
        else:
            out["sample_size"] = _int(size, "sample_size")
    if (seed := raw.get("sample_seed")) is not None:
        if isinstance(seed, bool) or not isinstance(seed, (str, int)) or str(seed) == "":
            raise _error("sample_seed", "must be text or a whole number")
        out["sample_seed"] = str(seed)
    for key in ("zip", "index"):
        if (flag := raw.get(key)) is not None:
            if not isinstance(flag, bool):
                raise _error(key, "must be true or false")
            out[key] = flag
    return PackOptions(**out)
