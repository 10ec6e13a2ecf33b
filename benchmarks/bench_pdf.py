"""Render the report PDF of a large organisation; print time, pages and ratios to baselines.

    python benchmarks/bench_pdf.py                        # 3,000 exceptions, 100,000 people
    python benchmarks/bench_pdf.py --exceptions 5000 --pack

The evidence is the scale benchmark's organisation (benchmarks/bench_pack.py: 100,000 people,
~110,000 accounts, 90 daily snapshots of HR and AWS) as judged results, built directly
(tests/evidence_factory.make_scale_evidence) so that this measures the report, not the
pipeline. Baselines in the same run, so the figures are ratios rather than machine-dependent
seconds:

- exceptions: the same organisation with a tenth of the exceptions. Pages and time should
  grow roughly in proportion to the exceptions (the long lists are printed as listings);
- population: the same exceptions in an organisation a tenth the size. Pages must not grow
  with the population (populations are counted and sampled, at most 40 rows each; the full
  populations are in the CSV files and the workbook).

Target on 2 cores: the PDF of 100,000 people and a few thousand exceptions in under 30 s.
``--pack`` also times the whole ``write_pack`` (CSV, workbook, both reports, zip, index).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from evidence_factory import make_scale_evidence  # noqa: E402
from pypdf import PdfReader  # noqa: E402

from reports.html import render_report  # noqa: E402
from reports.pdf import render_pdf  # noqa: E402


def measure(exceptions: int, people: int) -> dict:
    t0 = time.perf_counter()
    evidence = make_scale_evidence(exceptions=exceptions, people=people)
    built = time.perf_counter() - t0
    t1 = time.perf_counter()
    html = render_report(evidence, target="pdf")
    t2 = time.perf_counter()
    pdf = render_pdf(html)
    t3 = time.perf_counter()
    pages = len(PdfReader(io.BytesIO(pdf)).pages)
    return {"exceptions": len(evidence.exceptions), "people": people,
            "population_rows": sum(len(c.population) for c in evidence.controls),
            "build_s": built, "html_s": t2 - t1, "pdf_s": t3 - t2, "render_s": t3 - t1,
            "pages": pages, "pdf_mib": len(pdf) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exceptions", type=int, default=3000)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--pack", action="store_true", help="also time the whole write_pack")
    args = parser.parse_args()

    print(f"report PDF benchmark: {args.people:,} people, {args.exceptions:,} exceptions")
    runs = {
        "large": measure(args.exceptions, args.people),
        "baseline: 1/10 exceptions": measure(max(args.exceptions // 10, 1), args.people),
        "baseline: 1/10 population": measure(args.exceptions, max(args.people // 10, 1000)),
    }
    for name, r in runs.items():
        print(f"{name:>26}: {r['people']:>7,} people {r['population_rows']:>8,} population rows "
              f"{r['exceptions']:>6,} exceptions  HTML {r['html_s']:5.1f} s  PDF {r['pdf_s']:5.1f} s"
              f"  {r['pages']:>4} pages  {r['pdf_mib']:5.1f} MiB")
    large, few, small = (runs[k] for k in runs)
    print(f"exceptions x{large['exceptions'] / few['exceptions']:.1f}: "
          f"render time x{large['render_s'] / few['render_s']:.1f}, "
          f"pages x{large['pages'] / few['pages']:.1f}")
    print(f"population x{large['population_rows'] / small['population_rows']:.1f}: "
          f"render time x{large['render_s'] / small['render_s']:.2f}, "
          f"pages x{large['pages'] / small['pages']:.2f} (expect ~1)")
    ok = large["render_s"] < 30 and large["pages"] <= small["pages"] + 2
    if args.pack:
        from reports.pack import write_pack
        workdir = Path(tempfile.mkdtemp(prefix="accessproof-bench-pdf-"))
        try:
            evidence = make_scale_evidence(exceptions=args.exceptions, people=args.people)
            t = time.perf_counter()
            out = write_pack(evidence, workdir)
            wall = time.perf_counter() - t
            size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
            print(f"write_pack: {wall:.1f} s for {size:.0f} MiB "
                  f"(workbook {(out / 'workbook.xlsx').stat().st_size / 2**20:.1f} MiB, "
                  f"zip {out.with_name(out.name + '.zip').stat().st_size / 2**20:.1f} MiB)")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    print("target (PDF < 30 s, pages independent of the population):",
          "met" if ok else "NOT met")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
