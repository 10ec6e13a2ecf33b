"""The report's two charts, drawn with matplotlib as SVG and inlined into report.html/.pdf.

- coverage: per source, the snapshots over the period, the span the evidence covers, and the
  gaps (unrecoverable ones hatched red);
- deprovisioning latency: hours from termination to account disabled, binned, against the SLA.

Both are sized by the period and the bins, never by the population: a chart of 100,000 leavers
is as large as one of ten. Charts are drawn from what the controls produced (population columns,
source reports); nothing is judged here. The SVG is made safe to inline several times in one
HTML document: no XML prolog, every id prefixed by the chart's name, no external references.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from collector.results import Evidence, SourceReport  # noqa: E402

INK, MUTED, GRID = "#1d232b", "#5b6470", "#d5dae1"
BLUE, LIGHT_BLUE = "#1f3a5f", "#c9d8ec"
GREEN, RED, AMBER = "#2e7d4f", "#b3261e", "#d08a00"

_RC = {
    "font.family": "DejaVu Sans", "font.size": 7.5, "axes.edgecolor": MUTED,
    "axes.labelcolor": INK, "xtick.color": MUTED, "ytick.color": INK,
    "svg.fonttype": "none",          # text stays text: selectable, small, same font as the page
    "svg.hashsalt": "accessproof",   # deterministic ids
    "axes.spines.top": False, "axes.spines.right": False,
}


@dataclass(frozen=True)
class Chart:
    svg: str          # inline <svg> element
    description: str  # the chart in words (alt text and the figure caption's first sentence)


def _svg(fig: Figure, name: str) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]                       # drop <?xml ...?> and DOCTYPE
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    # ids must be unique in the HTML document that holds several charts
    text = re.sub(r'id="([^"]+)"', lambda m: f'id="{name}-{m[1]}"', text)
    text = re.sub(r'url\(#([^)]+)\)', lambda m: f"url(#{name}-{m[1]})", text)
    text = re.sub(r'xlink:href="#([^"]+)"', lambda m: f'xlink:href="#{name}-{m[1]}"', text)
    for attr in ("width", "height"):   # sized by the page's CSS, from the viewBox
        text = re.sub(rf'(<svg\b[^>]*?)\s{attr}="[^"]*"', r"\1", text, count=1)
    # CSS in the SVG would be CSS of the whole HTML page (and WeasyPrint warns about every
    # SVG property in a style attribute): presentation attributes instead
    text = re.sub(r"<style[^>]*>.*?</style>", "", text, flags=re.S)
    text = re.sub(r'style="([^"]*)"', _presentation, text)
    text = text.replace("<svg ", f'<svg class="chart-svg" role="img" aria-labelledby="{name}-title" '
                                 'stroke-linejoin="round" stroke-linecap="butt" ', 1)
    if re.search(r'(href|src)="(?!#)', text) or "@import" in text:
        raise ValueError(f"chart {name} would reference something outside the report")
    return text


def _presentation(m: re.Match) -> str:
    attrs = []
    for decl in m[1].split(";"):
        if ":" not in decl:
            continue
        prop, value = (part.strip() for part in decl.split(":", 1))
        if not re.fullmatch(r"[a-z-]+", prop):
            continue
        value = value.strip("'\"").replace('"', "").replace("'", "")
        attrs.append(f'{prop}="{value}"')
    return " ".join(attrs)


def _figure(width_in: float, height_in: float) -> Figure:
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width_in, height_in))
    return fig


def _title(svg: str, name: str, text: str) -> str:
    from markupsafe import escape
    return svg.replace(">", f'><title id="{name}-title">{escape(text)}</title>', 1)


# --- coverage -----------------------------------------------------------------------------------

def _naive(ts: Any) -> Any:
    return pd.Timestamp(ts).tz_convert("UTC").tz_localize(None).to_pydatetime()


def coverage_chart(evidence: Evidence) -> Chart:
    period = evidence.period
    sources: list[SourceReport] = list(evidence.sources)
    start, end = period.start, period.end
    until = evidence.judged_until
    rows = max(len(sources), 1)
    with matplotlib.rc_context(_RC):
        fig = _figure(7.0, 0.9 + 0.42 * rows)
        ax = fig.add_axes((0.14, 0.36 if rows < 3 else 0.26, 0.84,
                           0.56 if rows < 3 else 0.66))
        for i, s in enumerate(sources):
            y = rows - 1 - i
            ax.broken_barh([(_naive(start), _naive(end) - _naive(start))], (y - 0.32, 0.64),
                           facecolors="#f3f5f8", edgecolors=GRID, linewidth=0.5, zorder=1)
            if s.coverage_start is not None and s.coverage_end is not None:
                lo = max(pd.Timestamp(s.coverage_start), start)
                hi = min(pd.Timestamp(s.coverage_end), end)
                if hi > lo:
                    ax.broken_barh([(_naive(lo), _naive(hi) - _naive(lo))], (y - 0.22, 0.44),
                                   facecolors=LIGHT_BLUE, edgecolors="none", zorder=2)
            for g in s.gaps or []:
                lo, hi = max(pd.Timestamp(g["start"]), start), min(pd.Timestamp(g["end"]), end)
                if hi <= lo:
                    continue
                bad = bool(g.get("unrecoverable"))
                ax.broken_barh([(_naive(lo), _naive(hi) - _naive(lo))], (y - 0.32, 0.64),
                               facecolors="#f6d5d2" if bad else "#fbe7bf",
                               edgecolors=RED if bad else AMBER, linewidth=0.6,
                               hatch="////" if bad else None, zorder=3)
            shown = [r for r in s.snapshots
                     if start <= pd.Timestamp(r.started_at) <= end]
            good = [_naive(r.started_at) for r in shown if r.status in ("ok", "degraded")]
            other = [_naive(r.started_at) for r in shown if r.status not in ("ok", "degraded")]
            if good:
                ax.vlines(good, y - 0.3, y + 0.3, colors=BLUE, linewidth=0.7, zorder=4)
            if other:
                ax.vlines(other, y - 0.3, y + 0.3, colors=RED, linewidth=0.9, zorder=4)
        if until < end:
            ax.axvline(_naive(until), color=INK, linestyle=(0, (3, 2)), linewidth=0.8, zorder=5)
            ax.annotate("judged until", (_naive(until), rows - 0.55), fontsize=6.5,
                        color=INK, xytext=(3, 0), textcoords="offset points")
        ax.set_yticks(range(rows))
        ax.set_yticklabels([s.name for s in reversed(sources)] or ["—"])
        ax.set_ylim(-0.6, rows - 0.4)
        ax.set_xlim(_naive(start), _naive(end))
        span_days = (end - start).days
        if span_days > 100:
            ax.xaxis.set_major_locator(mdates.MonthLocator())
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%-d %b %Y"))
        else:
            ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=8))
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%-d %b"))
        ax.xaxis.set_minor_locator(mdates.DayLocator(interval=7) if span_days > 20
                                   else mdates.DayLocator())
        ax.tick_params(axis="y", length=0)
        ax.spines["left"].set_visible(False)
        ax.grid(axis="x", color=GRID, linewidth=0.5, zorder=0)
        handles = [Line2D([], [], color=BLUE, linewidth=1.2, label="snapshot"),
                   Patch(facecolor=LIGHT_BLUE, label="covered by snapshots and audit events"),
                   Patch(facecolor="#fbe7bf", edgecolor=AMBER, label="gap, recoverable"),
                   Patch(facecolor="#f6d5d2", edgecolor=RED, hatch="////",
                         label="gap, unrecoverable")]
        fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False, fontsize=6.8,
                   handlelength=1.6)
        svg = _svg(fig, "coverage")
    n_gaps = sum(len(s.gaps or []) for s in sources)
    n_bad = sum(bool(g.get("unrecoverable")) for s in sources for g in s.gaps or [])
    text = (f"Snapshots per source from {start:%Y-%m-%d} to {end:%Y-%m-%d} (UTC): "
            + "; ".join(f"{s.name} {len(s.snapshots)} snapshot{'s' if len(s.snapshots) != 1 else ''}"
                        for s in sources)
            + f". {n_gaps} gap{'s' if n_gaps != 1 else ''}, {n_bad} unrecoverable.")
    return Chart(_title(svg, "coverage", text), text)


# --- deprovisioning latency ---------------------------------------------------------------------

@dataclass(frozen=True)
class LatencyFacts:
    sla_hours: float
    disabled: int         # items with a time to disable
    within_sla: int
    over_sla: int
    median: float | None
    p95: float | None
    maximum: float | None
    not_disabled: int     # still enabled
    unknown: int          # disable time unknown
    pending: int          # within the SLA, not yet disabled


def latency_facts(population: pd.DataFrame, sla_hours: float) -> LatencyFacts | None:
    """The figures behind the chart, from the population's ``hours_to_disable`` and ``result``."""
    if population is None or "hours_to_disable" not in population.columns:
        return None
    hours = pd.to_numeric(population["hours_to_disable"], errors="coerce")
    result = (population["result"].astype("string") if "result" in population.columns
              else pd.Series(pd.NA, index=population.index, dtype="string"))
    known = hours.dropna()
    return LatencyFacts(
        sla_hours=float(sla_hours), disabled=int(len(known)),
        within_sla=int((known <= sla_hours).sum()), over_sla=int((known > sla_hours).sum()),
        median=float(known.median()) if len(known) else None,
        p95=float(known.quantile(0.95)) if len(known) else None,
        maximum=float(known.max()) if len(known) else None,
        not_disabled=int((result == "still_enabled").sum()),
        unknown=int(((result == "disable_time_unknown") & hours.isna()).sum()),
        pending=int((result == "within_sla_pending").sum()))


def latency_chart(population: pd.DataFrame, sla_hours: float) -> tuple[Chart, LatencyFacts] | None:
    facts = latency_facts(population, sla_hours)
    if facts is None or facts.disabled + facts.not_disabled + facts.unknown == 0:
        return None
    hours = pd.to_numeric(population["hours_to_disable"], errors="coerce").dropna().to_numpy()
    sla = float(sla_hours) if sla_hours and sla_hours > 0 else 24.0
    # fine bins up to twice the SLA, then one bin for everything later
    step = sla / 8
    edges = np.arange(0, 2 * sla + step / 2, step)
    counts, _ = np.histogram(np.clip(hours, 0, None), bins=edges)
    overflow = int((hours > edges[-1]).sum())
    with matplotlib.rc_context(_RC):
        fig = _figure(7.6, 2.1)
        ax = fig.add_axes((0.075, 0.2, 0.55, 0.68))
        centres = edges[:-1] + step / 2
        colours = [GREEN if hi <= sla + 1e-9 else RED for hi in edges[1:]]
        ax.bar(centres, counts, width=step * 0.9, color=colours, zorder=2)
        over_x = edges[-1] + step * 1.5
        ax.bar([over_x], [overflow], width=step * 0.9, color=RED, hatch="///",
               edgecolor="white", linewidth=0, zorder=2)
        ax.axvline(sla, color=INK, linestyle=(0, (4, 2)), linewidth=1, zorder=3)
        top = max([*counts, overflow, facts.not_disabled, facts.unknown, 1])
        # when one bin dwarfs the rest (most leavers disabled at once), a log scale keeps the
        # late ones visible
        small = [v for v in [*counts, overflow, facts.not_disabled, facts.unknown] if v > 0]
        log = bool(small) and top / min(small) > 40
        if log:
            ax.set_yscale("log")
            ax.set_ylim(0.7, top * 2.5)
            label_y = top * 1.8
        else:
            ax.set_ylim(0, top * 1.18)
            label_y = top * 1.1
        ax.annotate(f"SLA {sla:g} h", (sla, label_y), xytext=(3, 0),
                    textcoords="offset points", fontsize=7, color=INK, va="center")
        ticks = [0, sla / 2, sla, 1.5 * sla]
        ax.set_xticks(ticks + [over_x])
        ax.set_xticklabels([f"{t:g}" for t in ticks] + [f"> {2 * sla:g}"], fontsize=6.8)
        ax.set_xlim(-step * 0.3, over_x + step)
        ax.set_xlabel("hours from effective termination to account disabled "
                      "(bounded times: the later bound)", fontsize=6.8)
        ax.set_ylabel("accounts (log scale)" if log else "accounts", fontsize=7)
        ax.grid(axis="y", color=GRID, linewidth=0.5, zorder=0)
        if log:
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
                lambda v, _: f"{v:,.0f}" if v >= 1 else ""))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, nbins=5))
        # accounts without a time to disable, on the same scale
        cat = fig.add_axes((0.65, 0.2, 0.13, 0.68), sharey=ax)
        cat.bar([0, 1], [facts.not_disabled, facts.unknown], width=0.7, color=[RED, AMBER],
                zorder=2)
        cat.set_xticks([0, 1])
        cat.set_xticklabels(["still\nenabled", "time\nunknown"], fontsize=6.2)
        cat.set_xlim(-0.6, 1.6)
        cat.tick_params(axis="y", which="both", labelleft=False, length=0)
        cat.spines["left"].set_visible(False)
        cat.grid(axis="y", color=GRID, linewidth=0.5, zorder=0)
        cat.set_xlabel("not disabled", fontsize=6.8)
        side = fig.add_axes((0.815, 0.2, 0.17, 0.68))
        side.axis("off")
        lines = [("Disabled", f"{facts.disabled:,}"),
                 ("· within the SLA", f"{facts.within_sla:,}"),
                 ("· after the SLA", f"{facts.over_sla:,}"),
                 ("Median", _h(facts.median)), ("95th pct.", _h(facts.p95)),
                 ("Longest", _h(facts.maximum)),
                 ("Still enabled", f"{facts.not_disabled:,}"),
                 ("Time unknown", f"{facts.unknown:,}")]
        if facts.pending:
            lines.append(("Within SLA, pending", f"{facts.pending:,}"))
        for k, (label, value) in enumerate(lines):
            yy = 1 - k * 0.12
            side.text(0, yy, label, fontsize=6.8, color=MUTED, va="top", transform=side.transAxes)
            side.text(1, yy, value, fontsize=6.8, color=INK, va="top", ha="right",
                      transform=side.transAxes)
        svg = _svg(fig, "latency")
    text = (f"Deprovisioning latency: {facts.disabled:,} accounts disabled, {facts.within_sla:,} "
            f"within the {sla:g}-hour SLA and {facts.over_sla:,} after it; median "
            f"{_h(facts.median)}, 95th percentile {_h(facts.p95)}; {facts.not_disabled:,} still "
            f"enabled, {facts.unknown:,} with an unknown disable time.")
    return Chart(_title(svg, "latency", text), text), facts


def _h(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} h"
