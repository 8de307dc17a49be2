"""Reproduce the ABS paper's tables and figures: presets as data, a runner, paper-style reports.

``absclip reproduce table1 --data-root DIR --data-dir shared/data`` runs a preset; the library entry
points are :func:`~absclip.reproduce.runner.run_preset` and :func:`~absclip.reproduce.runner.dry_run`.
The presets module is light (no torch), so listing presets stays cheap; the runner is imported on use.
"""

from .presets import PRESETS, REFERENCE_OVERRIDES, DatasetSpec, Preset, Row, TimingSpec, get_preset

__all__ = ["PRESETS", "REFERENCE_OVERRIDES", "DatasetSpec", "Preset", "Row", "TimingSpec", "get_preset"]
