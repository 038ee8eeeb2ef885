"""The benchmark table format (schema version 2; version 1 is still read): its single source of truth,
writing and loading.

A table directory holds two files.

``table.csv`` — one row per (architecture, training seed), sorted by ``(arch, seed)``, columns in
this order (:data:`TABLE_COLUMNS`):

* ``arch`` — ``L{num_hidden_layers}-A{num_attention_heads}-H{hidden_size}-I{intermediate_size}``
  (:func:`arch_id`);
* ``num_hidden_layers``, ``num_attention_heads``, ``hidden_size``, ``intermediate_size`` (int) —
  the architecture, values of the manifest's ``space``;
* ``seed`` (int) — model initialisation and batch order (one of the manifest's ``seeds``);
* ``accuracy_trained``, ``accuracy_compressed``, ``accuracy_finetuned`` (float in [0, 1], or
  ``nan`` for a run that failed) — validation accuracy after one training epoch, after the
  ``compression`` pipeline (Lab 2: 8-bit integer quantisation + 50 % l1 pruning), after
  compression and one fine-tuning epoch;
* ``loss_trained``, ``loss_compressed``, ``loss_finetuned`` (float) — the matching validation losses;
* ``test_accuracy_trained``, ``test_accuracy_compressed``, ``test_accuracy_finetuned``,
  ``test_loss_trained``, ``test_loss_compressed``, ``test_loss_finetuned`` (schema 2) — the same three
  models on the test split (``data.n_test`` rows of the dataset's test split), which nothing selects
  on: the held-out figures of :mod:`search.bench.heldout`;
* ``params``, ``size_bytes_fp32``, ``size_bytes_compressed`` (int) — from the cost pass; compressed
  is quantised + sparse bytes;
* ``time_build_s``, ``time_train_s``, ``time_eval_trained_s``, ``time_compress_s``,
  ``time_eval_compressed_s``, ``time_finetune_s``, ``time_eval_finetuned_s``, ``time_total_s``
  (float seconds), and (schema 2) ``time_eval_test_s`` (the three test evaluations);
* ``precision`` (``fp32``/``bf16``, as resolved) and ``num_threads`` (int).

Architectures the model cannot build (``hidden_size % num_attention_heads != 0``) have no rows;
every buildable combination of the space has one row per seed.

``manifest.json`` — :data:`MANIFEST_KEYS`: ``schema_version`` (2), ``space`` (``{param: [values]}``
for the four parameters), ``model`` (the fixed ``ModelConfig`` fields), ``data`` (``DataConfig``),
``train`` and ``finetune`` (``TrainConfig`` dicts), ``compression`` (the pipeline,
``{"passes": ...}``), ``seeds``, ``n_rows``, ``versions`` (``{package: version}``), ``machine``
(cpu, flags, num_threads, precision), ``total_seconds``, ``content_hash`` (sha256 of the bytes of
``table.csv``), ``command`` and (schema 2) ``preregistration``: the analysis fixed before the first
row was trained (the config's ``[bench]`` table, :class:`search.bench.plan.BenchPlan`; ``{}`` when
there was none).

Schema versions: 1 (no test columns, no ``preregistration``) is read as it was written: its test
columns are NaN (:attr:`BenchTable.has_test` is False) and a replay scores picks on validation rows of
held-out seeds. 2 adds the test columns and ``preregistration`` (a major bump: a schema-1 reader
refuses the new columns).

The builder writes with :func:`write_table` then :func:`write_manifest`; readers use
:meth:`BenchTable.load`, which validates everything and raises one :class:`TableError` naming the
file, the field and what is valid. :func:`check_compatible` compares a search config with a table.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import platform
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mase_lite.errors import MaseError
from mase_lite.families import head_layout_problem
from mase_lite.machine import machine_info
from mase_lite.models import ARCH_FIELDS

from ..config_diff import config_difference, normalize_pipeline, show  # noqa: F401  (normalize_pipeline: moved there)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: Schema versions this mase-lite reads.
READABLE_SCHEMAS = (1, 2)
TABLE_FILE = "table.csv"
MANIFEST_FILE = "manifest.json"

#: The architecture parameters: :data:`mase_lite.models.ARCH_FIELDS` (also ``search.space.MODEL_PARAMS``).
ARCH_PARAMS = ARCH_FIELDS
ACCURACY_COLUMNS = ("accuracy_trained", "accuracy_compressed", "accuracy_finetuned")
LOSS_COLUMNS = ("loss_trained", "loss_compressed", "loss_finetuned")
#: Schema 2: the same models on the test split (never selected on).
TEST_ACCURACY_COLUMNS = ("test_accuracy_trained", "test_accuracy_compressed", "test_accuracy_finetuned")
TEST_LOSS_COLUMNS = ("test_loss_trained", "test_loss_compressed", "test_loss_finetuned")
SIZE_COLUMNS = ("params", "size_bytes_fp32", "size_bytes_compressed")
TIME_COLUMNS_V1 = ("time_build_s", "time_train_s", "time_eval_trained_s", "time_compress_s",
                   "time_eval_compressed_s", "time_finetune_s", "time_eval_finetuned_s", "time_total_s")
TIME_COLUMNS = (*TIME_COLUMNS_V1, "time_eval_test_s")
#: The columns of each schema version, in file order (:data:`TABLE_COLUMNS`: the current one).
SCHEMA_COLUMNS = {
    1: ("arch", *ARCH_PARAMS, "seed", *ACCURACY_COLUMNS, *LOSS_COLUMNS, *SIZE_COLUMNS, *TIME_COLUMNS_V1,
        "precision", "num_threads"),
    2: ("arch", *ARCH_PARAMS, "seed", *ACCURACY_COLUMNS, *LOSS_COLUMNS, *TEST_ACCURACY_COLUMNS, *TEST_LOSS_COLUMNS,
        *SIZE_COLUMNS, *TIME_COLUMNS, "precision", "num_threads"),
}
TABLE_COLUMNS = SCHEMA_COLUMNS[SCHEMA_VERSION]
INT_COLUMNS = (*ARCH_PARAMS, "seed", *SIZE_COLUMNS, "num_threads")
FLOAT_COLUMNS = (*ACCURACY_COLUMNS, *LOSS_COLUMNS, *TEST_ACCURACY_COLUMNS, *TEST_LOSS_COLUMNS, *TIME_COLUMNS)
STR_COLUMNS = ("arch", "precision")
#: Numeric columns kept as ``(n_archs, n_seeds)`` arrays by :class:`BenchTable` (NaN where a schema lacks them).
NUMERIC_COLUMNS = (*FLOAT_COLUMNS, *SIZE_COLUMNS, "num_threads")

MANIFEST_KEYS_V1 = ("schema_version", "space", "model", "data", "train", "finetune", "compression", "seeds",
                    "n_rows", "versions", "machine", "total_seconds", "content_hash", "command")
#: The manifest keys of each schema version (:data:`MANIFEST_KEYS`: the current one).
SCHEMA_MANIFEST_KEYS = {1: MANIFEST_KEYS_V1, 2: (*MANIFEST_KEYS_V1, "preregistration")}
MANIFEST_KEYS = SCHEMA_MANIFEST_KEYS[SCHEMA_VERSION]
#: Metric name -> accuracy column (validation rows: what searches select on).
METRIC_COLUMNS = {"trained": "accuracy_trained", "compressed": "accuracy_compressed", "finetuned": "accuracy_finetuned"}
#: Metric name -> test-split accuracy column (schema 2).
TEST_METRIC_COLUMNS = {m: f"test_{c}" for m, c in METRIC_COLUMNS.items()}
#: The splits a metric can be read on: ``val`` (selection) and ``test`` (held out).
SPLITS = ("val", "test")
#: Search variant -> the metric its studies optimise.
VARIANT_METRICS = {"baseline": "trained", "compress": "compressed", "compress_finetune": "finetuned"}


class TableError(MaseError):
    """A benchmark table is missing, malformed or does not fit a config; the message names the field."""


def arch_id(params: Mapping[str, Any]) -> str:
    """``{"num_hidden_layers": 2, ...}`` -> ``"L2-A4-H128-I512"``."""
    return ("L{num_hidden_layers}-A{num_attention_heads}-H{hidden_size}-I{intermediate_size}"
            .format(**{k: int(params[k]) for k in ARCH_PARAMS}))


def buildable(params: Mapping[str, Any]) -> bool:
    """Whether the model can be built (``hidden_size`` divisible by ``num_attention_heads``: the family
    check, :func:`mase_lite.families.head_layout_problem`)."""
    return head_layout_problem(params["hidden_size"], params["num_attention_heads"]) is None


def space_combinations(space: Mapping[str, Sequence[int]]) -> list[dict[str, int]]:
    """Every combination of a ``{param: [values]}`` space, in product order (buildable or not)."""
    return [dict(zip(ARCH_PARAMS, c)) for c in itertools.product(*(space[p] for p in ARCH_PARAMS))]


def file_hash(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- writing


def _format(column: str, value: Any) -> str:
    if column in INT_COLUMNS:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TableError(f"{TABLE_FILE}: column {column} must be an integer, got {value!r}")
        return str(int(value))
    if column in FLOAT_COLUMNS:
        if value is None:
            return "nan"
        v = float(value)
        return "nan" if math.isnan(v) else repr(v)
    return str(value)


def write_table(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` (dicts with exactly :data:`TABLE_COLUMNS`) as ``table.csv``, sorted by (arch, seed).

    ``path`` is the CSV file or its directory. A row's ``arch`` must be ``arch_id`` of its parameters.
    """
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / TABLE_FILE
    out = []
    for i, row in enumerate(rows):
        missing = [c for c in TABLE_COLUMNS if c not in row]
        extra = [c for c in row if c not in TABLE_COLUMNS]
        if missing or extra:
            raise TableError(f"{TABLE_FILE} row {i}: " + "; ".join(
                ([f"missing column(s) {', '.join(missing)}"] if missing else [])
                + ([f"unknown column(s) {', '.join(map(str, extra))}"] if extra else []))
                + f" (columns: {', '.join(TABLE_COLUMNS)})")
        if row["arch"] != arch_id(row):
            raise TableError(f"{TABLE_FILE} row {i}: arch = {row['arch']!r} but its parameters give {arch_id(row)!r}")
        out.append({c: _format(c, row[c]) for c in TABLE_COLUMNS})
    out.sort(key=lambda r: (r["arch"], int(r["seed"])))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: several build workers may finish together
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(TABLE_COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(out)
    os.replace(tmp, path)
    return path


def package_versions(packages: Sequence[str] = ("mase-lite", "torch", "transformers", "optuna", "numpy",
                                                "datasets", "tokenizers")) -> dict[str, str]:
    """``{package: installed version}`` (``python`` included; absent packages are left out)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_manifest(directory: str | Path, *, space: Mapping[str, Sequence[int]], model: Mapping[str, Any],
                   data: Mapping[str, Any], train: Mapping[str, Any], finetune: Mapping[str, Any],
                   compression: Mapping[str, Any], seeds: Sequence[int], total_seconds: float,
                   command: str | Sequence[str], versions: Mapping[str, str] | None = None,
                   machine: Mapping[str, Any] | None = None,
                   preregistration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``directory/manifest.json`` for the ``table.csv`` already there; returns the manifest.

    ``n_rows`` and ``content_hash`` are computed from the table; ``versions`` defaults to
    :func:`package_versions`, ``machine`` to :func:`machine_info` (no threads/precision);
    ``preregistration``: the analysis plan fixed before the build (default ``{}``: none).
    """
    directory = Path(directory)
    table = directory / TABLE_FILE
    if not table.is_file():
        raise TableError(f"{table} not found: write the table (write_table) before the manifest")
    with table.open(newline="") as fh:
        n_rows = sum(1 for _ in csv.reader(fh)) - 1
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "space": {p: [int(v) for v in space[p]] for p in ARCH_PARAMS},
        "model": {k: v for k, v in dict(model).items() if k not in (*ARCH_PARAMS, "seed")},
        "data": dict(data),
        "train": dict(train),
        "finetune": dict(finetune),
        "compression": copy.deepcopy(dict(compression)),
        "seeds": [int(s) for s in seeds],
        "n_rows": n_rows,
        "versions": dict(versions) if versions is not None else package_versions(),
        "machine": dict(machine) if machine is not None else machine_info(),
        "total_seconds": float(total_seconds),
        "content_hash": file_hash(table),
        "command": command if isinstance(command, str) else " ".join(map(str, command)),
        "preregistration": copy.deepcopy(dict(preregistration or {})),
    }
    path = directory / MANIFEST_FILE
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: several build workers may finish together
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return manifest


# --------------------------------------------------------------------------- loading


def _parse(column: str, raw: str, where: str) -> Any:
    raw = raw.strip()
    if column in INT_COLUMNS:
        try:
            return int(raw)
        except ValueError:
            raise TableError(f"{where}: {column} = {raw!r} is not an integer") from None
    if column in FLOAT_COLUMNS:
        if raw == "" or raw.lower() == "nan":
            return math.nan
        try:
            return float(raw)
        except ValueError:
            raise TableError(f"{where}: {column} = {raw!r} is not a number (use nan for a failed run)") from None
    return raw


def _check_manifest(m: Any, path: Path) -> None:
    if not isinstance(m, dict):
        raise TableError(f"{path}: must be a JSON object with keys {', '.join(MANIFEST_KEYS)}")
    version = m.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_SCHEMAS:
        raise TableError(f"{path}: schema_version = {version!r}; this mase-lite reads schema versions "
                         f"{', '.join(map(str, READABLE_SCHEMAS))} (rebuild the table with `mase-lite bench build`)")
    keys = SCHEMA_MANIFEST_KEYS[version]
    missing = [k for k in keys if k not in m]
    if missing:
        raise TableError(f"{path}: missing key(s) {', '.join(missing)} (keys of schema version {version}: "
                         f"{', '.join(keys)})")
    if version >= 2 and not isinstance(m["preregistration"], dict):
        raise TableError(f"{path}: preregistration must be an object ({{}} when nothing was pre-registered), "
                         f"got {m['preregistration']!r}")
    space = m["space"]
    if not isinstance(space, dict) or set(space) != set(ARCH_PARAMS):
        got = sorted(space) if isinstance(space, dict) else space
        raise TableError(f"{path}: space must have exactly the keys {', '.join(ARCH_PARAMS)}, got {got!r}")
    for p in ARCH_PARAMS:
        v = space[p]
        if (not isinstance(v, list) or not v or len(set(v)) != len(v)
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)):
            raise TableError(f"{path}: space.{p} = {v!r} must be a non-empty list of distinct positive integers")
    seeds = m["seeds"]
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise TableError(f"{path}: seeds = {seeds!r} must be a non-empty list of distinct integers")
    for key in ("model", "data", "train", "finetune", "compression", "versions", "machine"):
        if not isinstance(m[key], dict):
            raise TableError(f"{path}: {key} must be an object, got {m[key]!r}")
    if not isinstance(m["content_hash"], str) or len(m["content_hash"]) != 64:
        raise TableError(f"{path}: content_hash = {m['content_hash']!r} must be the sha256 hex digest of {TABLE_FILE}")


@dataclasses.dataclass
class BenchTable:
    """A validated benchmark table.

    ``archs``: buildable architecture ids (sorted); ``seeds``: the training seeds (manifest order);
    ``values[column]``: a ``(len(archs), len(seeds))`` float array for every numeric column, row
    ``arch_index[arch]``, column = seed index; ``params[arch]``: the architecture's parameters;
    ``precision[arch]``: per-seed precision strings.
    """

    directory: Path
    manifest: dict[str, Any]
    archs: list[str]
    seeds: list[int]
    params: dict[str, dict[str, int]]
    values: dict[str, np.ndarray]
    precision: dict[str, list[str]]
    arch_index: dict[str, int] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.arch_index = {a: i for i, a in enumerate(self.archs)}

    # -- loading
    @classmethod
    def load(cls, directory: str | Path) -> "BenchTable":
        """Read and validate ``directory/table.csv`` and ``directory/manifest.json``; TableError if invalid."""
        directory = Path(directory)
        if not directory.is_dir():
            raise TableError(f"table directory {directory} not found (a table directory holds {TABLE_FILE} and "
                             f"{MANIFEST_FILE}, written by `mase-lite bench build`)")
        table_path, manifest_path = directory / TABLE_FILE, directory / MANIFEST_FILE
        for p in (table_path, manifest_path):
            if not p.is_file():
                raise TableError(f"{p}: not found (a table directory holds {TABLE_FILE} and {MANIFEST_FILE}, "
                                 f"written by `mase-lite bench build`)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TableError(f"{manifest_path}: invalid JSON: {exc}") from None
        _check_manifest(manifest, manifest_path)
        version = manifest["schema_version"]
        columns = SCHEMA_COLUMNS[version]
        with table_path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise TableError(f"{table_path}: empty file (expected the header {', '.join(columns)})")
            missing = [c for c in columns if c not in header]
            unknown = [c for c in header if c not in columns]
            if missing or unknown or len(header) != len(set(header)):
                parts = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + \
                        ([f"unknown column(s) {', '.join(unknown)}"] if unknown else []) + \
                        (["repeated column names"] if len(header) != len(set(header)) else [])
                raise TableError(f"{table_path}: {'; '.join(parts)} (schema version {version} columns: "
                                 f"{', '.join(columns)})")
            raw_rows = list(reader)
        if file_hash(table_path) != manifest["content_hash"]:
            raise TableError(f"{table_path}: {TABLE_FILE} does not match {MANIFEST_FILE}'s content_hash: the table "
                             f"was edited or truncated")
        if len(raw_rows) != manifest["n_rows"]:
            raise TableError(f"{table_path}: {len(raw_rows)} rows but {MANIFEST_FILE} n_rows = {manifest['n_rows']}")
        return cls._from_rows(directory, manifest, header, raw_rows)

    @classmethod
    def _from_rows(cls, directory: Path, manifest: dict[str, Any], header: list[str],
                   raw_rows: list[list[str]]) -> "BenchTable":
        table_path = directory / TABLE_FILE
        space = manifest["space"]
        seeds = list(manifest["seeds"])
        seed_index = {s: j for j, s in enumerate(seeds)}
        combos = [c for c in space_combinations(space) if buildable(c)]
        archs = sorted(arch_id(c) for c in combos)
        params = {arch_id(c): c for c in combos}
        index = {a: i for i, a in enumerate(archs)}
        values = {c: np.full((len(archs), len(seeds)), np.nan) for c in NUMERIC_COLUMNS}
        precision = {a: [""] * len(seeds) for a in archs}
        seen: dict[tuple[str, int], int] = {}
        for n, raw in enumerate(raw_rows, start=2):  # line numbers of the file (header = line 1)
            where = f"{table_path} line {n}"
            if len(raw) != len(header):
                raise TableError(f"{where}: {len(raw)} fields, the header has {len(header)}")
            row = {c: _parse(c, v, where) for c, v in zip(header, raw)}
            for p in ARCH_PARAMS:
                if row[p] not in space[p]:
                    raise TableError(f"{where}: {p} = {row[p]} is not in {MANIFEST_FILE}'s space.{p} = {space[p]}")
            if row["arch"] != arch_id(row):
                raise TableError(f"{where}: arch = {row['arch']!r} but its parameters give {arch_id(row)!r}")
            if not buildable(row):
                raise TableError(f"{where}: arch {row['arch']} cannot be built (hidden_size {row['hidden_size']} is not "
                                 f"divisible by num_attention_heads {row['num_attention_heads']}) and must have no rows")
            if row["seed"] not in seed_index:
                raise TableError(f"{where}: seed = {row['seed']} is not in {MANIFEST_FILE}'s seeds = {seeds}")
            key = (row["arch"], row["seed"])
            if key in seen:
                raise TableError(f"{where}: duplicate (arch, seed) = ({key[0]!r}, {key[1]}), also on line {seen[key]}; "
                                 f"each architecture has one row per seed")
            seen[key] = n
            for c in (*ACCURACY_COLUMNS, *TEST_ACCURACY_COLUMNS):
                v = row.get(c, math.nan)
                if not math.isnan(v) and not 0.0 <= v <= 1.0:
                    raise TableError(f"{where}: {c} = {v} is out of range; accuracies are in [0, 1] (nan for a failed run)")
            i, j = index[row["arch"]], seed_index[row["seed"]]
            for c in NUMERIC_COLUMNS:
                values[c][i, j] = row.get(c, math.nan)  # NaN for a column the table's schema lacks
            precision[row["arch"]][j] = row["precision"]
        for a in archs:
            for s in seeds:
                if (a, s) not in seen:
                    raise TableError(f"{table_path}: no row for (arch, seed) = ({a!r}, {s}); every buildable architecture "
                                     f"of {MANIFEST_FILE}'s space needs one row per seed in seeds = {seeds}")
        for v in values.values():
            v.setflags(write=False)
        return cls(directory, manifest, archs, seeds, params, values, precision)

    # -- lookups
    @property
    def space(self) -> dict[str, list[int]]:
        """The manifest's ``{param: [values]}``."""
        return {p: list(self.manifest["space"][p]) for p in ARCH_PARAMS}

    @property
    def unbuildable(self) -> list[dict[str, int]]:
        """Combinations of the space the model cannot build (they have no rows)."""
        return [c for c in space_combinations(self.space) if not buildable(c)]

    @property
    def n_archs(self) -> int:
        return len(self.archs)

    @property
    def schema_version(self) -> int:
        return int(self.manifest["schema_version"])

    @property
    def has_test(self) -> bool:
        """Whether the table has test-split accuracies (schema 2, some of them not NaN)."""
        return self.schema_version >= 2 and any(bool(np.any(~np.isnan(self.values[c]))) for c in TEST_ACCURACY_COLUMNS)

    def n_rows_of(self, split: str) -> int | None:
        """Rows of ``split`` (``val``: ``data.n_val``, ``test``: ``data.n_test``) each accuracy was measured on."""
        key = {"val": "n_val", "test": "n_test"}[split]
        n = self.manifest.get("data", {}).get(key)
        return int(n) if isinstance(n, int) and not isinstance(n, bool) else None

    @staticmethod
    def column(metric: str, split: str = "val") -> str:
        """The column of ``metric`` (``trained``/``compressed``/``finetuned`` on ``split`` ``val`` or ``test``,
        or a numeric column name)."""
        if split not in SPLITS:
            raise TableError(f"split = {split!r} is not valid; choose one of: {', '.join(SPLITS)}")
        if metric in METRIC_COLUMNS:
            return (METRIC_COLUMNS if split == "val" else TEST_METRIC_COLUMNS)[metric]
        if metric in NUMERIC_COLUMNS:
            return metric
        raise TableError(f"metric = {metric!r} is not valid; choose one of: {', '.join(METRIC_COLUMNS)} "
                         f"(or a numeric column: {', '.join(NUMERIC_COLUMNS)})")

    def array(self, metric: str, split: str = "val") -> np.ndarray:
        """``(n_archs, n_seeds)`` values of ``metric`` (on ``split`` for an accuracy metric)."""
        return self.values[self.column(metric, split)]

    def means(self, metric: str) -> np.ndarray:
        """Per-architecture mean over seeds (NaN seeds left out; NaN if all are), in ``archs`` order."""
        a = self.array(metric)
        ok = ~np.isnan(a)
        n = ok.sum(axis=1)
        s = np.where(ok, a, 0.0).sum(axis=1)
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)

    def mean(self, metric: str) -> dict[str, float]:
        """``{arch: mean over seeds}`` of ``metric``."""
        return dict(zip(self.archs, self.means(metric).tolist()))

    def value(self, arch: str, seed_index: int, metric: str) -> float:
        """The value of ``metric`` for ``arch`` trained with ``seeds[seed_index]``."""
        return float(self.array(metric)[self.arch_index[arch], seed_index])

    def best_arch(self, metric: str) -> tuple[str, float]:
        """The architecture with the highest mean ``metric`` over seeds, and that mean."""
        m = self.means(metric)
        if np.all(np.isnan(m)):
            raise TableError(f"{self.directory / TABLE_FILE}: every {self.column(metric)} is nan")
        i = int(np.nanargmax(m))
        return self.archs[i], float(m[i])


# --------------------------------------------------------------------------- compatibility with a config


#: Where the config sections sit in the compared manifest (:func:`check_compatible`), by section kind.
MANIFEST_SECTIONS = {"model": "model", "data": "data", "train": "train", "finetune": "finetune",
                     "compression": "compression"}


def _diff_message(path: str, table_value: Any, config_value: Any) -> str:
    return (f"the config does not match the table: {path} = {show(table_value, 100)} in the table ({MANIFEST_FILE}), "
            f"{show(config_value, 100)} in the config")


def check_compatible(table: BenchTable, run_cfg: Any, sampler_specs: Sequence[str] | None = None,
                     metrics: Iterable[str] = ("trained",)) -> None:
    """Raise one TableError if replaying ``run_cfg``'s search on ``table`` would not mean what it says.

    Compared: the samplers (no ``+nodes``), the ``[space]`` lists (order-insensitive), then as a
    study's fingerprint is (:func:`search.config_diff.config_difference`: fields that do not change
    results skipped, a field absent on one side counts as its default) the fixed ``[model]`` fields,
    ``[data]`` (not ``data.n_test`` for a schema-1 table, which has no test columns) and ``[train]``,
    ``[finetune]`` if ``finetuned`` is among ``metrics`` (its seed only when ``[finetune]`` sets one:
    each row derives it from its own seed) and the compression pipeline (defaults of the pass
    configs filled in) if ``compressed`` or ``finetuned`` is.
    """
    specs = list(sampler_specs if sampler_specs is not None else run_cfg.search.samplers)
    for i, spec in enumerate(specs):
        if spec.endswith("+nodes"):
            base = spec[: -len("+nodes")]
            raise TableError(f"search.samplers[{i}] = {spec!r}: a table has model-level architectures only; per-node "
                             f"(+nodes) choices cannot be replayed; use {base!r}")
    m = table.manifest
    for p in ARCH_PARAMS:
        t, c = sorted(m["space"][p]), sorted(getattr(run_cfg.space, p))
        if t != c:
            raise TableError(_diff_message(f"space.{p}", t, c))
    stored = {k: m[k] for k in ("model", "data", "train")}
    current = {"model": run_cfg.model.to_dict(), "data": run_cfg.data.to_dict(), "train": run_cfg.train.to_dict()}
    ignore = {"data.n_test"} if table.schema_version < 2 else set()  # schema 1: no test columns
    metrics = set(metrics)
    if "finetuned" in metrics:
        stored["finetune"], current["finetune"] = m["finetune"], run_cfg.finetune_config().to_dict()
        if "seed" not in run_cfg.finetune:
            ignore.add("finetune.seed")
    if metrics & {"compressed", "finetuned"}:
        stored["compression"], current["compression"] = m["compression"], dict(run_cfg.compression)
    diff = config_difference(stored, current, MANIFEST_SECTIONS, ignore)
    if diff is not None:
        raise TableError(_diff_message(diff.path, diff.stored, diff.current))
