"""Neural architecture search with Optuna: search spaces, samplers, objectives, studies, plots.

``space`` (what a trial samples) <- ``samplers`` (how) <- ``objectives`` (what a trial does) <-
``study`` (run config, storage, resume, summary) and ``plots`` (figures read back from storage).
"""

from .objectives import OBJECTIVES, BaseObjective, BaselineObjective, CompressFinetuneObjective, CompressObjective
from .samplers import SAMPLERS, make_sampler, parse_sampler
from .space import BaseSearchSpace, InvalidArchitecture, ModelSpace, NodeSpace, SearchSpace, SpaceConfig, describe_graph
from .config import RunConfig, SearchError, load_run_config, plan_studies
from .study import run_search

__all__ = [
    "OBJECTIVES", "SAMPLERS", "BaseObjective", "BaseSearchSpace", "BaselineObjective", "CompressFinetuneObjective",
    "CompressObjective", "InvalidArchitecture", "ModelSpace", "NodeSpace", "RunConfig", "SearchError", "SearchSpace",
    "SpaceConfig", "describe_graph", "load_run_config", "make_sampler", "parse_sampler", "plan_studies", "run_search",
]
