"""CC6.2 controls as pure functions of ``ControlInputs`` (DESIGN §4). Control ids are public."""

from __future__ import annotations

from ..results import ControlResult
from . import deprovisioning, no_access, orphans, provisioning, role_changes
from .inputs import ControlInputs, SourceState

CONTROLS = {
    provisioning.ID: provisioning.evaluate,
    deprovisioning.ID: deprovisioning.evaluate,
    no_access.ID: no_access.evaluate,
    orphans.ID: orphans.evaluate,
    role_changes.ID: role_changes.evaluate,
}


def evaluate_all(inputs: ControlInputs) -> list[ControlResult]:
    return [evaluate(inputs) for evaluate in CONTROLS.values()]


__all__ = ["CONTROLS", "ControlInputs", "SourceState", "evaluate_all"]
