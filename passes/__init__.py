"""Analysis and transform passes over :class:`mase_lite.MaseGraph`, their registry and pipeline."""

from .pipeline import parse_pipeline, run_pass, run_pipeline
from .registry import PASSES, PassContext, PassSpec, available_passes, get_pass, register_pass

__all__ = ["PASSES", "PassContext", "PassSpec", "available_passes", "get_pass", "parse_pipeline", "register_pass",
           "run_pass", "run_pipeline"]
