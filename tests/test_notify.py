"""Notifications after a pack or a failed run: a Slack-compatible webhook (a local HTTP listener)
and SMTP e-mail (a local aiosmtpd server with STARTTLS and AUTH). A failure to notify is logged
without the webhook URL or credentials and never fails the run. (The notification after a pack,
with its path and summary, is covered by tests/test_secrets_canary.py, which writes packs.)"""

from __future__ import annotations

import email
import json
import logging
import socket
import textwrap
import threading
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner

from collector.cli import cli
from collector.config import load_config
from collector.errors import ConfigError
from collector.notify import Notice, Notifier, load_notifications

HOOK_PATH = "/services/T000/B000/hook-secret-path-4f1d"
SMTP_PASSWORD = "smtp-password-9c2e71"


# --- local servers ------------------------------------------------------------------------------


class Hook:
    """A Slack-compatible incoming webhook on 127.0.0.1 (ephemeral port)."""

    def __init__(self):
        self.received: list[dict] = []
        self.status = 200
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hook.received.append({"path": self.path, "json": json.loads(body),
                                       "type": self.headers.get("Content-Type")})
                payload = b"ok" if hook.status == 200 else b"invalid_token"
                self.send_response(hook.status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{HOOK_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class LocalSMTP(Controller):
    """aiosmtpd on an ephemeral port."""

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class Mailbox:
    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"robot" \
            and auth_data.password == SMTP_PASSWORD.encode()
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    authority = trustme.CA()
    pem = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(pem))
    return authority, pem


@pytest.fixture
def smtp(ca):
    import ssl
    authority, _ = ca
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    mailbox = Mailbox()
    controller = LocalSMTP(mailbox, hostname="127.0.0.1", port=0, tls_context=context,
                           require_starttls=True, auth_require_tls=True,
                           authenticator=mailbox.authenticate)
    controller.start()
    yield controller.port, mailbox
    controller.stop()


@pytest.fixture
def hook():
    server = Hook()
    yield server
    server.stop()


def write_config(tmp_path: Path, notifications: str) -> Path:
    (tmp_path / "hr.csv").write_text("id,mail,start,end\n1,alice@corp.example,2024-01-01,\n")
    config = tmp_path / "accessproof.toml"
    config.write_text(textwrap.dedent('''
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
        [notifications]
        ''') + textwrap.dedent(notifications))
    return config


@pytest.fixture
def channels(tmp_path, monkeypatch, smtp, hook, ca):
    port, mailbox = smtp
    monkeypatch.setenv("ACCESSPROOF_WEBHOOK", hook.url)
    (tmp_path / "smtp-password").write_text(SMTP_PASSWORD + "\n")
    config = write_config(tmp_path, f'''
        webhook_url = "env:ACCESSPROOF_WEBHOOK"
        smtp_host = "127.0.0.1"
        smtp_port = {port}
        smtp_username = "robot"
        smtp_password = "file:smtp-password"
        mail_from = "accessproof@corp.example"
        mail_to = ["compliance@corp.example", "ops@corp.example"]
        ca_bundle = "{ca[1]}"
        timeout_seconds = 5
        ''')
    return config, mailbox, hook


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("body, key, message", [
    ('colour = "red"', "colour", "unknown key"),
    ('smtp_host = "mail"\nmail_from = "a@b.example"', "mail_to", "required"),
    ('mail_to = ["a@b.example"]', "mail_to", "without smtp_host"),
    ('smtp_host = "m"\nmail_from = "a@b.example"\nmail_to = "c@d.example"\nsmtp_ssl = true\n'
     'smtp_starttls = true', "smtp_starttls", "smtp_ssl"),
    ('webhook_url = "ftp://hooks.example/x"', "webhook_url", "http"),
    ('smtp_host = "m"\nmail_from = "a@b.example"\nmail_to = ["c@d.example"]\n'
     'smtp_username = "robot"', "smtp_password", "together"),
    ('smtp_host = "m"\nmail_from = "a@b.example"\nmail_to = []', "mail_to", "non-empty"),
])
def test_bad_notifications_are_config_errors(tmp_path, body, key, message):
    config = write_config(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_notifications(load_config(config))
    assert f"key '{key}'" in str(err.value) and message in str(err.value)
    assert "[notifications]" in str(err.value)
    result = CliRunner().invoke(cli, ["check", "--config", str(config)])
    assert result.exit_code == 3 and f"key '{key}'" in result.output


def test_a_literal_smtp_password_is_refused(tmp_path):
    config = write_config(tmp_path, 'smtp_password = "hunter2-literal"')
    result = CliRunner().invoke(cli, ["collect", "--config", str(config)])
    assert result.exit_code == 3 and "smtp_password" in result.output
    assert "hunter2-literal" not in result.output


def test_defaults(tmp_path):
    settings = load_notifications(load_config(write_config(
        tmp_path, 'smtp_host = "m"\nmail_from = "a@b.example"\nmail_to = "c@d.example"')))
    assert settings.port == 587 and settings.smtp_starttls and settings.mail_to == ("c@d.example",)
    assert settings.channels() == ["e-mail"]
    assert load_notifications(load_config(write_config(tmp_path, ""))).enabled is False


# --- channels -----------------------------------------------------------------------------------


def test_webhook_and_mail_are_delivered(channels, caplog):
    config, mailbox, hook = channels
    caplog.set_level(logging.DEBUG)
    notifier = Notifier.from_config(load_config(config))
    failures = notifier.send(Notice("pack 2026-Q1: complete", "Pack written to:\n  /srv/pack"))
    assert failures == []
    [posted] = hook.received
    assert posted["path"] == HOOK_PATH and posted["type"] == "application/json"
    assert posted["json"] == {"text": "Pack written to:\n  /srv/pack"}
    [message] = mailbox.messages
    assert mailbox.logins == ["robot"]               # over STARTTLS (AUTH requires TLS here)
    assert message["Subject"] == "[accessproof] pack 2026-Q1: complete"
    assert message["To"] == "compliance@corp.example, ops@corp.example"
    assert message["From"] == "accessproof@corp.example"
    assert "/srv/pack" in message.get_content()
    assert HOOK_PATH not in caplog.text and SMTP_PASSWORD not in caplog.text


def test_failures_are_logged_never_raised_and_never_show_the_url(channels, caplog):
    config, mailbox, hook = channels
    caplog.set_level(logging.DEBUG)
    hook.status = 500
    with socket.socket() as probe:                       # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    text = config.read_text()
    config.write_text(text.replace(next(line for line in text.splitlines()
                                        if line.startswith("smtp_port")),
                                   f"smtp_port = {closed}"))
    notifier = Notifier.from_config(load_config(config))
    failures = notifier.send(Notice("subject", "text"))
    assert len(failures) == 2
    assert failures[0] == ("webhook notification failed: HTTP 500 from "
                           f"http://127.0.0.1:{hook.server.server_address[1]}: 'invalid_token'")
    assert failures[1].startswith("e-mail notification failed: ConnectionRefusedError")
    assert mailbox.messages == []
    hook.stop()                                          # nobody listens any more
    failures = notifier.send(Notice("subject", "text"))
    assert failures[0] == "webhook notification failed: ConnectionError (Connection refused)"
    for text in (caplog.text, *failures):
        assert HOOK_PATH not in text and SMTP_PASSWORD not in text
    assert "webhook notification failed" in caplog.text


# --- after runs ---------------------------------------------------------------------------------


def test_a_failed_run_notifies_a_good_collect_does_not(channels):
    config, mailbox, hook = channels
    ok = CliRunner().invoke(cli, ["collect", "--config", str(config)])
    assert ok.exit_code == 0, ok.output
    assert hook.received == [] and mailbox.messages == []

    (config.parent / "hr.csv").unlink()
    failed = CliRunner().invoke(cli, ["collect", "--config", str(config)])
    assert failed.exit_code == 3, failed.output
    [posted] = hook.received
    text = posted["json"]["text"]
    assert text.startswith("The collect run #2 on ") and "exit status 3" in text
    assert "hr: failed" in text and "hr.csv" in text
    [message] = mailbox.messages
    assert message["Subject"] == "[accessproof] collect run failed: hr"
    from collector.runs import RunHistory
    latest = RunHistory(config.parent / "store", readonly=True).recent(1)[0]
    assert (latest.status, latest.exit_code) == ("error", 3)


def test_check_notify_sends_a_test_message(channels):
    config, mailbox, hook = channels
    result = CliRunner().invoke(cli, ["check", "--config", str(config), "--notify"])
    assert result.exit_code == 0, result.output
    assert "notifications        ok    test message sent (webhook, e-mail)" in result.output
    assert "test notification" in mailbox.messages[0]["Subject"]
    assert "accessproof check --notify" in hook.received[0]["json"]["text"]
