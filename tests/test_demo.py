"""`accessproof demo`: the synthetic organisation through the real collect → pack path, once.

The demo collects a quarter of simulated days from moto, CloudTrail, Google, Graph and Jira
emulators over HTTP, so it is the slowest test of the suite; every assertion shares that one run,
which collects every second day (the command collects daily) to halve its time.
"""

import csv
import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import cli
from collector.demo import run_demo
from reports.manifest import verify_ok, verify_pack


@pytest.fixture(scope="module")
def demo_pack(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines = []
    path, code = run_demo(out, echo=lines.append, today=dt.date(2026, 12, 3), cadence_days=2)
    return Path(path), code, lines


def exceptions(pack: Path) -> set[tuple[str, str, str]]:
    with open(pack / "exceptions.csv", newline="") as fh:
        return {(r["control"], r["reason"], r["account"]) for r in csv.DictReader(fh)}


def test_demo_plants_one_exception_of_every_kind(demo_pack):
    pack, code, _ = demo_pack
    assert code == 1       # exceptions found, every source collected
    reasons = {(c, r) for c, r, _ in exceptions(pack)}
    assert reasons == {
        ("provisioning-approved", "no_ticket"),
        ("provisioning-approved", "approved_after_creation"),
        ("provisioning-approved", "self_approved"),
        ("provisioning-approved", "ticket_not_approved"),
        ("deprovisioning-timely", "still_enabled"),
        ("deprovisioning-timely", "disabled_late"),
        ("deprovisioning-timely", "disable_time_unknown"),
        ("no-access-after-termination", "login_after_termination"),
        ("orphaned-accounts", "no_hr_record"),
        ("orphaned-accounts", "terminated_before_period"),
        ("role-change-approved", "no_ticket"),
        ("role-change-approved", "approved_after_change"),
    }
    found = exceptions(pack)
    # the expired allowlist entry no longer excludes; the valid one does
    assert ("orphaned-accounts", "no_hr_record", "backup-agent") in found
    assert not any(acc == "ci-deployer" for _, _, acc in found)
    # an Entra guest nobody in HR knows is an orphan; the one invited under an HR alias is not
    guests = [acc for c, r, acc in found if "#EXT#" in acc]
    assert len(guests) == 1 and guests[0].startswith("consultant_ext-advisors.example")
    with open(pack / "exceptions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # late disables are decided both from an audit event and from snapshot bounds
    late = {r["evidence"] for r in rows if r["reason"] == "disabled_late"}
    assert {"audit event", "snapshot bound"} <= late
    # a leaver signed in after termination in AWS and in Google Workspace
    assert {r["source"] for r in rows if r["reason"] == "login_after_termination"} == \
        {"aws-prod", "workspace"}
    # ticket findings name their ticket
    assert all(r["ticket"].startswith("ACCESS-") for r in rows
               if r["control"] == "provisioning-approved" and r["reason"] != "no_ticket")


def test_demo_results_state_the_entra_licence_limitation(demo_pack):
    pack, _, _ = demo_pack
    results = json.loads((pack / "results.json").read_text())
    assert results["period"]["label"] == "2026-Q3"
    sources = {s["name"]: s for s in results["sources"]}
    assert {n: s["status"] for n, s in sources.items()} == {
        "hr": "ok", "aws-prod": "ok", "workspace": "ok", "entra": "degraded", "jira": "ok"}
    assert any("P1" in lim for lim in sources["entra"]["limitations"])
    controls = {c["id"]: c for c in results["controls"]}
    # no sign-in data from Entra: never a silent pass, and the pack says it is incomplete
    assert controls["no-access-after-termination"]["complete"] is False
    assert results["status"] == "incomplete"
    assert all(c["complete"] for i, c in controls.items() if i != "no-access-after-termination")
    assert controls["deprovisioning-timely"]["population"] >= 60     # 3 systems per leaver
    assert controls["orphaned-accounts"]["population"] > 450
    assert sources["aws-prod"]["records"]["accounts"] > 150


def test_demo_pack_verifies_and_detects_a_changed_byte(demo_pack, tmp_path):
    pack, _, _ = demo_pack
    assert verify_ok(verify_pack(pack, require_chain=True))
    copy = tmp_path / "copy"
    import shutil
    shutil.copytree(pack, copy)
    target = copy / "report.pdf"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["verify", str(copy)])
    assert result.exit_code == 1
    assert "FAIL files" in result.output and "report.pdf" in result.output
