"""Transform passes: they rewrite graph nodes and are recorded in the graph's history."""

from . import identity, prune, quantize, shrink  # noqa: F401  (registers the passes)
