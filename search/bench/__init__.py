"""A tabular NAS benchmark: every architecture of a model-level grid trained with several seeds, once.

* :mod:`search.bench.table` — the table format (``table.csv`` + ``manifest.json``), writing and
  validated loading (:class:`~search.bench.table.BenchTable`), config compatibility;
* :mod:`search.bench.replay` — Optuna samplers run against the table instead of training;
* :mod:`search.bench.stats` — curves, regret, paired tests, the noise floor and Lab 2's questions
  2 and 3 computed from replays and the table;
* :mod:`search.bench.plots` — the figures.

The submodules are imported on demand (this package imports nothing heavy).
"""
