"""The pipeline: options, the typed Context, the pass contract, the pass list and its runner.

    load ─► normalize ─► analyze ─► keep_whole ─► capture ─► score ─► choose_importance ─► plan ─► fuse
         ─► repair ─► emit ─► train ─► validate

(a method may insert passes: tpp trains after plan)
"""

from .build import FLOW, passes
from .context import CalibrationState, Context, Decisions, ModelState
from .contract import PASSES, Pass, PassContractError, PassFailed, register_pass
from .options import Options, auto_round_to
from .runner import run, run_passes

__all__ = ["FLOW", "PASSES", "CalibrationState", "Context", "Decisions", "ModelState", "Options", "Pass",
           "PassContractError", "PassFailed", "auto_round_to", "passes", "register_pass", "run", "run_passes"]
