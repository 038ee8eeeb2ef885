"""A tabular NAS benchmark: every architecture of a model-level grid trained with several seeds, once.

* :mod:`search.bench.table` — the table format (``table.csv`` + ``manifest.json``), writing and
  validated loading (:class:`~search.bench.table.BenchTable`), config compatibility;
* :mod:`search.bench.replay` — Optuna samplers run against the table instead of training;
* :mod:`search.bench.heldout` — held-out scoring of the picks (seeds a run did not draw, the test
  split) and the leave-one-training-seed-out jackknife every interval and p-value comes from;
* :mod:`search.bench.stats` — curves, regret, paired tests, the noise report and Lab 2's questions
  2 and 3 computed from replays and the table;
* :mod:`search.bench.plan` — the ``[bench]`` pre-registration of a table's analysis;
* :mod:`search.bench.power` — the power of a table design from a pilot table's variance components;
* :mod:`search.bench.synthetic` — synthetic tables and vectorised simulations (tests, power);
* :mod:`search.bench.plots` — the figures.

The submodules are imported on demand (this package imports nothing heavy).
"""
