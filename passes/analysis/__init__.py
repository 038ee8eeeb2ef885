"""Analysis passes: they annotate or measure a graph without changing what it computes."""

from . import calibrate, common_metadata, cost, report  # noqa: F401  (registers the passes)
