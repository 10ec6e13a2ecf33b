"""Secrets never appear: every command runs at -vv (debug) with canary secrets in the environment
(AWS credentials, the webhook URL, the job store URL) and in files (the SMTP password through
file:), against moto and the CloudTrail emulator; then every captured log record and output, every
notification sent, and every file under the store (snapshots, raw pages, packs, run history, job
store) is searched for the canaries, compressed and binary formats decoded first."""

from __future__ import annotations

import datetime as dt
import email
import gzip
import io
import json
import logging
import sqlite3
import textwrap
import threading
import zipfile
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner

from accessproof_fakes.aws import reset_moto, start_moto
from accessproof_fakes.cloudtrail import CloudTrailEmulator, make_event
from collector import service as service_module
from collector.cli import cli

CANARIES = {
    "AWS_SECRET_ACCESS_KEY": "CANARYawsSecretKey5b8e1f0a9d",
    "AWS_SESSION_TOKEN": "CANARYawsSessionToken77c2e4b1",
    "webhook": "CANARYwebhookPath3e9a0c6d",
    "smtp_password": "CANARYsmtpPassword0f4b8d2e",
    "database": "CANARYjobStoreName8a1c",
}
UTC = dt.timezone.utc


# --- scanning ---------------------------------------------------------------------------------


def decoded(path: Path) -> list[bytes]:
    """The bytes of a file as stored and, for compressed or binary formats, as decoded."""
    data = path.read_bytes()
    out = [data]
    name = path.name
    if name.endswith(".gz"):
        out.append(gzip.decompress(data))
    elif name.endswith(".parquet"):
        out.append(pq.read_table(path).to_pandas().to_csv().encode())
    elif name.endswith((".xlsx", ".zip")):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            out += [archive.read(member) for member in archive.namelist()]
    elif name.endswith(".pdf"):
        from pypdf import PdfReader
        reader = PdfReader(io.BytesIO(data))
        out.append("\n".join(page.extract_text() or "" for page in reader.pages).encode())
        out.append(json.dumps({k: str(v) for k, v in (reader.metadata or {}).items()}).encode())
    elif name.endswith((".sqlite", ".db")):
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            out.append("\n".join(db.iterdump()).encode())
        finally:
            db.close()
    return out


def found_in_files(root: Path, canaries: dict[str, str]) -> list[str]:
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        for blob in decoded(path):
            for name, value in canaries.items():
                if value.encode() in blob:
                    hits.append(f"{name} in {path.relative_to(root)}")
    return sorted(set(hits))


def found_in_text(label: str, text: str, canaries: dict[str, str]) -> list[str]:
    return [f"{name} in {label}" for name, value in canaries.items() if value in text]


def test_the_scan_finds_a_planted_canary(tmp_path):
    """The scanner itself can fail: a canary hidden in each stored format is found."""
    import pandas as pd
    planted = {"x": "CANARYplanted"}
    (tmp_path / "a.json").write_text('{"k": "CANARYplanted"}')
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "p.jsonl.gz").write_bytes(gzip.compress(b'{"body": "CANARYplanted"}'))
    pd.DataFrame({"c": ["CANARYplanted" * 50]}).to_parquet(tmp_path / "t.parquet",
                                                          compression="zstd")
    with zipfile.ZipFile(tmp_path / "w.xlsx", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/sharedStrings.xml", "<t>CANARYplanted</t>")
    db = sqlite3.connect(tmp_path / "runs.sqlite")
    db.execute("CREATE TABLE runs (error TEXT)")
    db.execute("INSERT INTO runs VALUES ('CANARYplanted')")
    db.commit()
    db.close()
    assert b"CANARYplanted" not in (tmp_path / "raw" / "p.jsonl.gz").read_bytes()
    hits = found_in_files(tmp_path, planted)
    assert hits == ["x in a.json", "x in raw/p.jsonl.gz", "x in runs.sqlite", "x in t.parquet",
                    "x in w.xlsx"]


# --- local servers ------------------------------------------------------------------------------


class LocalSMTP(Controller):
    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class Mailbox:
    def __init__(self):
        self.raw: list[bytes] = []
        self.logins = 0

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.raw.append(envelope.content)
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and \
            auth_data.password == CANARIES["smtp_password"].encode()
        self.logins += ok
        return AuthResult(success=ok)


class Hook:
    def __init__(self):
        self.bodies: list[str] = []
        self.paths: list[str] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                hook.paths.append(self.path)
                hook.bodies.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = (f"http://127.0.0.1:{self.server.server_address[1]}/services/"
                    f"{CANARIES['webhook']}")

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def servers():
    server, url = start_moto()
    trail = CloudTrailEmulator().start()
    mailbox = Mailbox()
    smtp = LocalSMTP(mailbox, hostname="127.0.0.1", port=0, auth_require_tls=False,
                     authenticator=mailbox.authenticate)
    smtp.start()
    hook = Hook()
    yield url, trail, smtp.port, mailbox, hook
    hook.stop()
    smtp.stop()
    trail.stop()
    server.stop()


@pytest.fixture
def setup(servers, tmp_path, monkeypatch):
    url, trail, smtp_port, mailbox, hook = servers
    reset_moto(url)
    trail.reset()
    for name in ("AWS_PROFILE", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    jobs_db = tmp_path / f"jobs-{CANARIES['database']}.sqlite"
    for key, value in {
            "AWS_ACCESS_KEY_ID": "AKIACANARYTESTKEY000",
            "AWS_SECRET_ACCESS_KEY": CANARIES["AWS_SECRET_ACCESS_KEY"],
            "AWS_SESSION_TOKEN": CANARIES["AWS_SESSION_TOKEN"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "ACCESSPROOF_WEBHOOK_URL": hook.url,
            "ACCESSPROOF_DB_URL": f"sqlite:///{jobs_db}"}.items():
        monkeypatch.setenv(key, value)
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing",
                       aws_session_token=None)
    now = dt.datetime.now(UTC)
    left = (now - dt.timedelta(days=2)).date()
    for user in ("alice@corp.example", "bob@corp.example"):
        iam.create_user(UserName=user)
        iam.create_login_profile(UserName=user, Password="Pw-123456789!")
    trail.add(make_event("ConsoleLogin", now - dt.timedelta(hours=5), "bob@corp.example"))
    (tmp_path / "hr.csv").write_text("id,mail,start,end\n1,alice@corp.example,2024-01-01,\n"
                                     f"2,bob@corp.example,2024-01-01,{left:%Y-%m-%d}\n")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "smtp-password").write_text(CANARIES["smtp_password"] + "\n")
    config = tmp_path / "accessproof.toml"
    config.write_text(textwrap.dedent(f'''
        [store]
        path = "store"
        [hr]
        type = "csv"
        path = "hr.csv"
        date_format = "%Y-%m-%d"
        timezone = "UTC"
        [hr.columns]
        person_id = "id"
        email = "mail"
        hired_on = "start"
        terminated_on = "end"
        [[sources]]
        name = "aws-prod"
        type = "aws_iam"
        endpoint_url = "{url}"
        cloudtrail_endpoint_url = "{trail.url}"
        max_attempts = 2
        [schedule]
        database_url = "env:ACCESSPROOF_DB_URL"
        [notifications]
        webhook_url = "env:ACCESSPROOF_WEBHOOK_URL"
        smtp_host = "127.0.0.1"
        smtp_port = {smtp_port}
        smtp_starttls = false
        smtp_username = "robot"
        smtp_password = "file:secrets/smtp-password"
        mail_from = "accessproof@corp.example"
        mail_to = ["compliance@corp.example"]
        timeout_seconds = 5
        '''))
    quarter = f"{now.year}-Q{(now.month - 1) // 3 + 1}"
    return config, quarter, jobs_db, mailbox, hook


class Commands:
    """Runs accessproof commands at -vv and keeps everything they printed."""

    def __init__(self):
        self.outputs: list[tuple[str, str]] = []

    def __call__(self, *args, expect: int = 0) -> str:
        result = CliRunner().invoke(cli, ["-vv", *map(str, args)])
        text = result.output + result.stdout + result.stderr
        self.outputs.append((str(args[0]), text))
        assert result.exit_code == expect, (args, text)
        return result.stdout


def assert_no_canary(store: Path, jobs_db: Path, commands: Commands, caplog, mailbox,
                     hook) -> None:
    hits = found_in_files(store, CANARIES)
    if jobs_db.exists():
        hits += [f"{name} in the job store" for blob in decoded(jobs_db)
                 for name, value in CANARIES.items() if value.encode() in blob]
    for label, text in commands.outputs:
        hits += found_in_text(f"output of {label}", text, CANARIES)
    hits += found_in_text("log records", caplog.text, CANARIES)
    hits += found_in_text("log records (raw)", "\n".join(
        f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records), CANARIES)
    for i, raw in enumerate(mailbox.raw):
        message = email.message_from_bytes(raw, policy=policy.default)
        hits += found_in_text(f"e-mail {i}", raw.decode(errors="replace")
                              + message.get_content(), CANARIES)
    for i, body in enumerate(hook.bodies):
        hits += found_in_text(f"webhook message {i}", body, CANARIES)
    assert hits == [], hits
    assert any(r.levelno == logging.DEBUG for r in caplog.records)     # debug logging was on


def test_collect_pack_check_status_permissions_verify_reveal_no_secret(setup, caplog):
    config, quarter, jobs_db, mailbox, hook = setup
    caplog.set_level(logging.DEBUG)
    mails, posts = len(mailbox.raw), len(hook.bodies)
    invoke = Commands()
    invoke("check", "--config", config, "--notify")
    invoke("collect", "--config", config)
    pack = invoke("pack", "--config", config, "--period", quarter,
                  expect=1).strip().splitlines()[-1]        # bob left and signed in afterwards
    text = invoke("status", "--config", config)
    assert "job store env:ACCESSPROOF_DB_URL" in text
    invoke("status", "--config", config, "--json")
    invoke("permissions")
    invoke("verify", pack)

    store = config.parent / "store"
    assert Path(pack).is_dir()
    from collector.runs import RunHistory
    [packed, collected] = RunHistory(store, readonly=True).recent()
    assert (collected.kind, packed.kind, packed.pack_path) == ("collect", "pack", pack)
    # notifications went out (test message, pack) with the pack path and its summary
    assert len(mailbox.raw) - mails == 2 and len(hook.bodies) - posts == 2
    assert mailbox.logins >= 2 and all(p.endswith(CANARIES["webhook"]) for p in hook.paths)
    summary = json.loads(hook.bodies[-1])["text"]
    assert f"Evidence pack for {quarter} written to:\n  {pack}" in summary
    assert "Controls:" in summary and "deprovisioning-timely: fail" in summary
    assert email.message_from_bytes(mailbox.raw[-1], policy=policy.default)["Subject"] \
        .startswith(f"[accessproof] pack {quarter}: ")

    assert_no_canary(store, jobs_db, invoke, caplog, mailbox, hook)
    scanned = {p.suffix for p in store.rglob("*") if p.is_file()}
    assert {".json", ".gz", ".parquet", ".pdf", ".html", ".csv", ".sqlite"} <= scanned


def test_run_and_serve_reveal_no_secret(setup, caplog, monkeypatch):
    config, quarter, jobs_db, mailbox, hook = setup
    caplog.set_level(logging.DEBUG)
    from apscheduler.triggers.date import DateTrigger

    class QuickService(service_module.Service):
        """The service with a collect run right away; it stops after that run."""

        def __init__(self, path):
            super().__init__(path, triggers={"collect": DateTrigger(dt.datetime.now(UTC))},
                             stop_after_runs=1, run_for=20)

    monkeypatch.setattr(service_module, "Service", QuickService)
    posts = len(hook.bodies)
    invoke = Commands()
    pack = invoke("run", "--config", config, expect=1).strip().splitlines()[-1]
    invoke("serve", "--config", config)
    invoke("status", "--config", config)

    store = config.parent / "store"
    assert jobs_db.is_file()
    from collector.runs import RunHistory
    kinds = [(r.kind, r.trigger, r.status) for r in RunHistory(store, readonly=True).recent()]
    assert kinds == [("collect", "schedule", "ok"), ("run", "cli", "exceptions")]
    assert RunHistory(store, readonly=True).recent()[1].pack_path == pack
    assert any(pack in body for body in hook.bodies[posts:])
    assert_no_canary(store, jobs_db, invoke, caplog, mailbox, hook)
