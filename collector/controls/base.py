"""Shared pieces of the controls: completeness from source health, and frames of findings."""

from __future__ import annotations

import pandas as pd

from ..results import Finding
from .inputs import ControlInputs


def source_limitations(inputs: ControlInputs, *, hr: bool = True) -> list[str]:
    """A control needing a failed or never-collected source cannot be complete."""
    out = []
    sources = ([inputs.hr] if hr else []) + inputs.account_sources
    for src in sources:
        if not src.has_snapshot:
            out.append(f"source '{src.name}' has no good snapshot")
        elif not src.ok:
            out.append(f"the latest collection of source '{src.name}' failed")
    return out


def findings_frame(findings: list[Finding]) -> pd.DataFrame:
    return pd.DataFrame([f.__dict__ for f in findings])
