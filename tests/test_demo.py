"""`accessproof demo`: the synthetic organisation through the real collect → pack path, once.

The demo collects ~100 simulated days from moto and the CloudTrail emulator over HTTP, so it is
the slowest test of the suite (about a minute); every assertion shares that one run.
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
    path, code = run_demo(out, echo=lines.append, today=dt.date(2026, 12, 3))
    return Path(path), code, lines


def exceptions(pack: Path) -> set[tuple[str, str, str]]:
    with open(pack / "exceptions.csv", newline="") as fh:
        return {(r["control"], r["reason"], r["account"]) for r in csv.DictReader(fh)}


def test_demo_plants_one_exception_of_every_kind(demo_pack):
    pack, code, _ = demo_pack
    assert code == 1       # exceptions found, every source collected
    reasons = {(c, r) for c, r, _ in exceptions(pack)}
    assert reasons == {
        ("deprovisioning-timely", "still_enabled"),
        ("deprovisioning-timely", "disabled_late"),
        ("deprovisioning-timely", "disable_time_unknown"),
        ("no-access-after-termination", "login_after_termination"),
        ("orphaned-accounts", "no_hr_record"),
        ("orphaned-accounts", "terminated_before_period"),
    }
    found = exceptions(pack)
    # the expired allowlist entry no longer excludes; the valid one does
    assert ("orphaned-accounts", "no_hr_record", "backup-agent") in found
    assert not any(acc == "ci-deployer" for _, _, acc in found)
    # late disables are decided both from an audit event and from snapshot bounds
    with open(pack / "exceptions.csv", newline="") as fh:
        late = [r["evidence"] for r in csv.DictReader(fh) if r["reason"] == "disabled_late"]
    assert {"audit event", "snapshot bound"} <= set(late)


def test_demo_results_are_complete_and_cover_the_quarter(demo_pack):
    pack, _, _ = demo_pack
    results = json.loads((pack / "results.json").read_text())
    assert results["period"]["label"] == "2026-Q3"
    assert results["status"] == "complete"
    assert {s["name"]: s["status"] for s in results["sources"]} == {"hr": "ok", "aws-prod": "ok"}
    controls = {c["id"]: c for c in results["controls"]}
    assert all(c["complete"] for c in controls.values())
    assert controls["deprovisioning-timely"]["population"] >= 20
    # the orphaned-accounts population is every enabled account at the period end
    assert controls["orphaned-accounts"]["population"] > 150
    # the collector outage is a gap bridged by the stored CloudTrail events
    aws = next(s for s in results["sources"] if s["name"] == "aws-prod")
    assert aws["records"]["accounts"] > 150


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
