"""Pack a quarter of daily snapshots of a large organisation; print wall time and peak RSS.

    python benchmarks/bench_pack.py                 # 100,000 people, ~110,000 IAM users, 90 days
    python benchmarks/bench_pack.py --people 20000  # quicker

The synthetic store is written through the real ``SnapshotStore`` (tables conformed, hashed,
published) but without HTTP: the benchmark measures the pack, not the emulators. The pack runs
in a child process (`accessproof pack`) so that its peak RSS is its own.

Baselines in the same run, so that the figures are ratios rather than machine-dependent seconds:
- I/O floor: reading every table of every snapshot the pack uses, once, with pyarrow.
- Population independence: the same exceptions in an organisation a tenth the size; the PDF's
  page count must not grow with the population (full populations belong in the CSV annex).

Targets on 2 cores: pack under 60 s and 2 GiB for 100,000 people.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from collector.store import SnapshotStore

PERIOD = "2026-Q1"
START = pd.Timestamp("2026-01-01T02:00Z")
INSTANCE = "123456789012"
PLANTED = {"still_enabled": 40, "disabled_late": 60, "no_hr_record": 50, "login_after": 30}


def build_store(root: Path, people: int, days: int, seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    store = SnapshotStore(root)
    ids = np.arange(people)
    emails = pd.Series([f"user{i:06d}@corp.example" for i in ids])
    hired = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 2000, people), unit="D")
    # ~3 % leave during the quarter, ~2 % left before it (their accounts removed then)
    leave_day = np.full(people, -1)
    leavers = rng.choice(people, int(people * 0.03), replace=False)
    leave_day[leavers] = rng.integers(1, days - 3, len(leavers))
    left_before = np.setdiff1d(rng.choice(people, int(people * 0.02), replace=False), leavers)
    terminated_on = pd.Series([None] * people, dtype=object)
    for i in leavers:
        terminated_on[i] = (START + pd.Timedelta(days=int(leave_day[i]))).date()
    for i in left_before:
        terminated_on[i] = dt.date(2025, 11, 15)

    hr = pd.DataFrame({
        "person_id": [f"P{i:06d}" for i in ids], "email": emails,
        "name": [f"Person {i}" for i in ids], "department": "Engineering", "title": "Engineer",
        "worker_type": np.where(ids % 10 == 0, "contractor", "employee"),
        "hired_on": [d.date() for d in hired], "terminated_on": terminated_on})
    eff = pd.Series([pd.Timestamp(d, tz="UTC") + pd.Timedelta(days=1) if d else pd.NaT
                     for d in terminated_on])
    hr["termination_effective"] = eff

    # accounts: one per person (user name = email), one in ten also has an admin account
    # tagged with the person's email, plus service and unowned accounts
    admins = ids[ids % 10 == 3]
    logins = np.concatenate([emails.to_numpy(), [f"adm-{i:06d}" for i in admins],
                             [f"svc-{i:03d}" for i in range(20)],
                             [f"orphan-{i:03d}" for i in range(PLANTED["no_hr_record"])]])
    owner = np.concatenate([ids, admins, np.full(20 + PLANTED["no_hr_record"], -1)])
    acc_email = np.where(owner >= 0, emails.to_numpy()[np.maximum(owner, 0)], None)
    n_acc = len(logins)
    base = pd.DataFrame({
        "source": "aws-prod", "instance": INSTANCE,
        "account_id": [f"AIDA{i:016d}" for i in range(n_acc)], "login": logins,
        "email": acc_email, "display_name": logins,
        "kind": np.where(owner >= 0, "human", "unknown"), "enabled": True,
        "created_at": pd.Timestamp("2019-06-01T00:00Z"), "disabled_at": pd.NaT,
        "last_login_at": START - pd.Timedelta(days=3), "privileged": owner % 50 == 0,
        "groups": [["developers"]] * n_acc, "never_logged_in": False})
    # accounts of people who left before the period are gone, but for a few
    gone = np.isin(owner, left_before[5:])
    # the planted exceptions among leavers
    late = leavers[:PLANTED["disabled_late"]]
    never = leavers[PLANTED["disabled_late"]:PLANTED["disabled_late"] + PLANTED["still_enabled"]]
    snoop = leavers[-PLANTED["login_after"]:]
    # before the next daily snapshot, so that even the disables without an event are on time
    disable_delay_h = rng.uniform(0.2, 1.8, people)
    disable_delay_h[late] = rng.uniform(50, 90, len(late))
    disable_at = np.full(n_acc, np.datetime64("NaT"), dtype="datetime64[us]")
    leaver_acc = np.flatnonzero(np.isin(owner, leavers) & ~np.isin(owner, never))
    for a in leaver_acc:
        p = owner[a]
        t = eff[p] + pd.Timedelta(hours=float(disable_delay_h[p]))
        disable_at[a] = np.datetime64(t.tz_convert(None), "us")

    stayers = np.flatnonzero((owner >= 0) & ~np.isin(owner, leavers) & ~np.isin(owner, left_before))

    # HR snapshots and account snapshots, one per day
    for day in range(days):
        at = START + pd.Timedelta(days=day)
        writer = store.begin("hr", "csv", at.to_pydatetime())
        writer.write_table("people", hr)
        writer.commit(finished_at=(at + pd.Timedelta(seconds=30)).to_pydatetime(),
                      principal="bench", instances=["hr.csv"], window=None)

        frame = base[~gone].copy()
        disabled = ~np.isnat(disable_at[~gone]) & (disable_at[~gone] <= np.datetime64(
            at.tz_convert(None), "us"))
        frame.loc[disabled, "enabled"] = False
        since = at - pd.Timedelta(days=90 if day == 0 else 1, hours=1)
        lo = np.datetime64(since.tz_convert(None), "us")
        hi = np.datetime64(at.tz_convert(None), "us")
        ev_idx = np.flatnonzero(~np.isnat(disable_at) & (disable_at > lo) & (disable_at <= hi))
        # most disables come with their CloudTrail event; a few are only bounded by snapshots
        ev_idx = ev_idx[ev_idx % 7 != 0]
        events = pd.DataFrame({
            "source": "aws-prod", "instance": INSTANCE,
            "at": pd.to_datetime(disable_at[ev_idx]).tz_localize("UTC"), "action": "disabled",
            "actor": "arn:aws:iam::123456789012:user/it", "target_account": logins[ev_idx],
            "target_email": None, "outcome": "success",
            "event_id": [f"ev-{a}-disable" for a in ev_idx]})
        # ordinary sign-ins, by people who are not leaving
        logins_today = rng.choice(stayers, min(2000, len(stayers) // 2), replace=False)
        login_ev = pd.DataFrame({
            "source": "aws-prod", "instance": INSTANCE,
            "at": at - pd.Timedelta(hours=5), "action": "login", "actor": logins[logins_today],
            "target_account": logins[logins_today], "target_email": None, "outcome": "success",
            "event_id": [f"ev-{day}-login-{a}" for a in logins_today]})
        snoop_acc = np.flatnonzero(np.isin(owner, snoop))
        snoop_ev = pd.DataFrame({
            "source": "aws-prod", "instance": INSTANCE,
            "at": [eff[owner[a]] + pd.Timedelta(minutes=30) for a in snoop_acc],
            "action": "login", "actor": logins[snoop_acc], "target_account": logins[snoop_acc],
            "target_email": None, "outcome": "success",
            "event_id": [f"ev-snoop-{a}" for a in snoop_acc]})
        snoop_ev = snoop_ev[(snoop_ev["at"] > since) & (snoop_ev["at"] <= at)]
        writer = store.begin("aws-prod", "aws_iam", at.to_pydatetime())
        writer.write_table("accounts", frame)
        writer.write_table("events", pd.concat([events, login_ev, snoop_ev], ignore_index=True))
        writer.commit(finished_at=(at + pd.Timedelta(minutes=4)).to_pydatetime(),
                      principal="arn:aws:iam::123456789012:user/bench", instances=[INSTANCE],
                      window=(since.to_pydatetime(), at.to_pydatetime()))
        if day % 15 == 0:
            print(f"  wrote day {day + 1}/{days}", file=sys.stderr, flush=True)
    return {"people": people, "accounts": n_acc, "leavers": len(leavers)}


def write_config(root: Path) -> Path:
    allow = root / "service-accounts.toml"
    allow.write_text("".join(
        f'[[accounts]]\nsource = "aws-prod"\naccount = "svc-{i:03d}"\nowner = "ops@corp.example"\n'
        f'reason = "service"\nexpires = 2030-01-01\n\n' for i in range(20)))
    config = root / "accessproof.toml"
    config.write_text(f'''[store]
path = "{root / 'store'}"
[hr]
type = "csv"
path = "hr.csv"
date_format = "%Y-%m-%d"
timezone = "UTC"
[service_accounts]
path = "service-accounts.toml"
[[sources]]
name = "aws-prod"
type = "aws_iam"
''')
    return config


def io_floor(store_root: Path) -> float:
    start = time.perf_counter()
    for path in sorted((store_root / "snapshots").rglob("*.parquet")):
        pq.read_table(path)
    return time.perf_counter() - start


# The child reports its own peak RSS: RUSAGE_CHILDREN would mix the runs of both scenarios.
_CHILD = ("import resource, sys\n"
          "from collector.cli import cli\n"
          "try:\n"
          "    cli(sys.argv[1:], prog_name='accessproof')\n"
          "finally:\n"
          "    print(f'PEAK_RSS_KIB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}',"
          " file=sys.stderr)\n")


def run_pack(config: Path) -> tuple[float, int, Path]:
    """`accessproof pack` in a child process; its wall time and peak RSS (KiB)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, "pack", "--config", str(config),
                           "--period", PERIOD], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        print(proc.stdout, proc.stderr, file=sys.stderr)
        raise SystemExit(f"pack failed with exit status {proc.returncode}")
    rss_kib = int(proc.stderr.rsplit("PEAK_RSS_KIB=", 1)[1].split()[0])
    return wall, rss_kib, Path(proc.stdout.strip().splitlines()[-1])


def pdf_pages(path: Path) -> int:
    from pypdf import PdfReader
    return len(PdfReader(path).pages)


def scenario(workdir: Path, people: int, days: int) -> dict:
    root = workdir / f"org-{people}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    shape = build_store(root / "store", people, days)
    setup = time.perf_counter() - t0
    config = write_config(root)
    floor = io_floor(root / "store")
    wall, rss_kib, pack = run_pack(config)
    results = json.loads((pack / "results.json").read_text())
    return {**shape, "setup_s": setup, "io_floor_s": floor, "pack_s": wall,
            "peak_rss_mib": rss_kib / 1024, "pdf_pages": pdf_pages(pack / "report.pdf"),
            "exceptions": sum(len(c["exceptions"]) for c in results["controls"]),
            "store_mib": sum(p.stat().st_size for p in (root / "store" / "snapshots").rglob("*")
                             if p.is_file()) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="accessproof-bench-"))
    print(f"benchmark: {args.people} people, {args.days} daily snapshots, in {workdir}")
    big = scenario(workdir, args.people, args.days)
    small = scenario(workdir, max(args.people // 10, 1000), args.days)
    for name, r in (("large", big), ("small (baseline)", small)):
        print(f"{name:>17}: {r['people']:>7} people {r['accounts']:>7} accounts  "
              f"store {r['store_mib']:7.1f} MiB  pack {r['pack_s']:6.1f} s  "
              f"peak RSS {r['peak_rss_mib']:7.0f} MiB  I/O floor {r['io_floor_s']:5.1f} s  "
              f"PDF {r['pdf_pages']:>3} pages  exceptions {r['exceptions']}")
    print(f"pack time / I/O floor (large): {big['pack_s'] / big['io_floor_s']:.1f}x")
    print(f"pack time large / small: {big['pack_s'] / small['pack_s']:.1f}x for "
          f"{big['accounts'] / small['accounts']:.1f}x the accounts")
    print(f"PDF pages large / small: {big['pdf_pages'] / small['pdf_pages']:.2f} "
          "(exceptions drive pages, not the population: expect ~1)")
    ok = big["pack_s"] < 60 and big["peak_rss_mib"] < 2048
    print("targets (pack < 60 s, < 2 GiB):", "met" if ok else "NOT met")
    if os.environ.get("BENCH_KEEP") is None and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
