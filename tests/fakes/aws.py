"""moto's server for IAM and STS on 127.0.0.1 (DESIGN §7: real boto3 over real HTTP).

moto runs in this process, in a thread, on an ephemeral port. It serves every AWS service at one
URL, so the same endpoint works for IAM and STS. CloudTrail ``LookupEvents`` is not implemented by
moto: use ``accessproof_fakes.cloudtrail`` for it.
"""

from __future__ import annotations

import logging
import urllib.request

from moto.server import ThreadedMotoServer


def start_moto(*, quiet: bool = True) -> tuple[ThreadedMotoServer, str]:
    """Start moto on 127.0.0.1 with an ephemeral port; returns the server and its endpoint URL.

    AWS-managed policy ARNs (``arn:aws:iam::aws:policy/AdministratorAccess``) exist only when
    ``MOTO_IAM_LOAD_MANAGED_POLICIES=true`` is set while moto builds its IAM backend, i.e. before
    the first IAM request after a start or reset.
    """
    if quiet:  # werkzeug logs one line per request
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=not quiet)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def _post(url: str, data: bytes = b"") -> None:
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def reset_moto(url: str) -> None:
    """Forget every resource in every account (``POST /moto-api/reset``)."""
    _post(f"{url}/moto-api/reset")


def enforce_moto_auth(url: str, enabled: bool = True) -> None:
    """Make moto check credentials and IAM policies (AccessDenied, InvalidClientTokenId).

    Off by default. Set it after seeding: from then on only keys created in moto are accepted and
    each call is checked against the caller's policies. Turn it off again when done.
    """
    _post(f"{url}/moto-api/reset-auth", b"0" if enabled else b"inf")
