"""The units of work, done one way: typed records, planning, the work, one writer and one done-rule.

    records  ScoringCell, FinetuneRun, BaseEval (units) and CellResult, RunResult, ExperimentResult
    plan     config -> cells (resolve models, draw samples, keys); scored cell -> experiment (arms x seeds)
    work     score_cell, train_run, evaluate_base; run_unit = done-rule, then work
    results  the writer (hive or flat layout, provenance columns, record last) and `load_done`
    runner   run_serial: a whole sweep in this process (CLI, notebooks); flows/ runs the same units on Ray
    report   markdown summary and manifest; track: MLflow runs of the same units

See docs/architecture.md for the contracts.
"""

from plop_core.units.layout import Layout
from plop_core.units.records import (
    BaseEval,
    CellResult,
    Experiment,
    ExperimentResult,
    FinetuneRun,
    ModelRef,
    Outcome,
    RunResult,
    SampleRef,
    ScoringCell,
    ScoringShard,
    ShardResult,
)
from plop_core.units.results import load_done
from plop_core.units.runner import run_serial

__all__ = ["BaseEval", "CellResult", "Experiment", "ExperimentResult", "FinetuneRun", "Layout", "ModelRef", "Outcome",
           "RunResult", "SampleRef", "ScoringCell", "ScoringShard", "ShardResult", "load_done", "run_serial"]
