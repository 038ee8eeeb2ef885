"""Shared test fixtures.

Data: the real IMDb parquet files and bert-base-uncased tokenizer from the shared mirror,
``$MASE_LITE_DATA`` (a relative value is taken relative to the repository root, as CI sets
``MASE_LITE_DATA=../shared/data``), default ``<repo>/../shared/data``. Without the mirror the data
tests skip, except in CI (``$CI`` set), where they fail. Tests never use the network
(``HF_HUB_OFFLINE=1``) and never write to the user's cache (``MASE_LITE_CACHE`` points at a temp dir,
``TORCH_EXTENSIONS_DIR`` into ``.pytest_cache``).
"""

from __future__ import annotations

import os
from pathlib import Path

# Before transformers/datasets/huggingface_hub are imported anywhere: no hub access from tests (a
# missing mirror must fail fast instead of trying, or hanging on, the network).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Under pytest-xdist the workers share the cores: each gets its share of intra-op threads (torch's
# default, one per core in every worker, oversubscribes them); subprocesses inherit it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_SET_THREADS = _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ
if _SET_THREADS:
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The native quantise-and-prune operator is built into the repository's pytest cache (once, kept
# between local runs), not into the user's ~/.cache/torch_extensions.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".pytest_cache" / "torch_extensions"))


def _resolve_data_dir() -> Path:
    raw = os.environ.get("MASE_LITE_DATA")
    path = Path(raw).expanduser() if raw else REPO.parent / "shared" / "data"
    if not path.is_absolute():
        path = (REPO / path).resolve()
    return path


DATA_DIR = _resolve_data_dir()
os.environ["MASE_LITE_DATA"] = str(DATA_DIR)  # library code resolves relative paths against the cwd


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test session gets its own empty mase-lite cache (never ``~/.cache``)."""
    cache = tmp_path_factory.mktemp("mase-lite-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASE_LITE_CACHE", str(cache))
        yield cache


def in_ci() -> bool:
    """Whether the tests run in CI: ``$CI`` is set to anything but ``""``, ``0``, ``false``, ``no``, ``off``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def require_data_dir(path: Path) -> Path:
    """``path`` if it holds the data mirror; else skip the test -- or, in CI (:func:`in_ci`), fail it:
    the mirror is always there in CI, so data tests that skip there would hide a broken setup."""
    if not (path / "imdb" / "train.parquet").is_file():
        msg = f"data mirror not found at {path} (set MASE_LITE_DATA to the directory holding imdb/ and bert-base-uncased/)"
        if in_ci():
            pytest.fail(f"{msg}; in CI ($CI is set) the data tests must run, not skip", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data mirror (``imdb/``, ``bert-base-uncased/``); skips if it is absent (fails in CI)."""
    return require_data_dir(DATA_DIR)


@pytest.fixture(scope="session")
def tokenizer(data_dir):
    """The bert-base-uncased tokenizer from the mirror."""
    from mase_lite.data import DataConfig, load_tokenizer

    return load_tokenizer(DataConfig(data_dir=str(data_dir)))


@pytest.fixture(scope="session")
def tiny_data_config(data_dir, tmp_path_factory):
    """A small seeded IMDb subset: 256 train / 64 val / 64 test rows, max_length 48, private cache."""
    from mase_lite.data import DataConfig

    return DataConfig(
        data_dir=str(data_dir),
        n_train=256,
        n_val=64,
        n_test=64,
        max_length=48,
        seed=0,
        cache_dir=str(tmp_path_factory.mktemp("tiny-imdb-cache")),
    )


@pytest.fixture(scope="session")
def tiny_splits(tiny_data_config, tokenizer):
    """The tokenised splits of :func:`tiny_data_config` (``mase_lite.data.Splits``)."""
    from mase_lite.data import load_splits

    return load_splits(tiny_data_config, tokenizer)


def make_tiny_bert(seed: int = 0, **overrides):
    """A 2-layer, 32-wide BertForSequenceClassification (bert-base-uncased vocabulary), seeded."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    kwargs = dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=30522,
        max_position_embeddings=128,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**kwargs))


@pytest.fixture
def tiny_bert():
    """A fresh :func:`make_tiny_bert` model (seed 0) for each test."""
    return make_tiny_bert()


@pytest.fixture
def graph():
    """A fresh traced 1-layer, 32-wide BERT classifier (compression pass tests; see _compression_helpers)."""
    from _compression_helpers import tiny_graph

    return tiny_graph()


@pytest.fixture(scope="module")
def inputs():
    """Fixed inputs for :func:`graph`."""
    from _compression_helpers import tiny_inputs

    return tiny_inputs()


@pytest.fixture
def fake_training():
    """Search without training: the default lifecycle (:func:`search.lifecycle.set_default_lifecycle`)
    is one whose trainer is a :class:`_search_helpers.FakeTraining` and which traces each model config
    once (copied per trial). Returns the fake; ``fake.lifecycle`` is the lifecycle."""
    from _search_helpers import FakeTraining, fake_lifecycle

    from search.lifecycle import set_default_lifecycle

    fake = FakeTraining()
    fake.lifecycle = fake_lifecycle(fake)
    previous = set_default_lifecycle(fake.lifecycle)
    try:
        yield fake
    finally:
        set_default_lifecycle(previous)


# --------------------------------------------------------------------------- PostgreSQL

_PG_URL_VAR = "MASE_LITE_TEST_POSTGRES"


@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a PostgreSQL database for the multi-worker tests.

    ``$MASE_LITE_TEST_POSTGRES`` when set (CI: ``.ci/run`` starts a server and sets it); else a
    throwaway server started for this session with ``.ci/postgres.sh`` (stopped at the end) where
    PostgreSQL and the ``psycopg`` driver are installed; else the test skips -- or, in CI
    (:func:`in_ci`), fails, since there the server must have been started.
    """
    import shutil
    import subprocess

    url = os.environ.get(_PG_URL_VAR)
    if url:
        yield url
        return
    why = None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        why = "the psycopg driver is not installed (pip install mase-lite[postgres])"
    if why is None and not (shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))):
        why = "PostgreSQL is not installed (no initdb)"
    if in_ci():
        pytest.fail(f"${_PG_URL_VAR} is not set{f' and {why}' if why else ''}; in CI ($CI is set) .ci/run "
                    f"starts PostgreSQL and the PostgreSQL tests must run, not skip", pytrace=False)
    if why:
        pytest.skip(why)
    proc = subprocess.run(["bash", str(REPO / ".ci" / "postgres.sh"), "start"], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"could not start a local PostgreSQL server: {proc.stderr.strip()[-500:]}")
    env = dict(line.removeprefix("export ").split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    try:
        yield env[_PG_URL_VAR]
    finally:
        subprocess.run(["bash", str(REPO / ".ci" / "postgres.sh"), "stop", env["MASE_LITE_PG_DIR"]],
                       capture_output=True, timeout=120)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on :func:`postgres_server` for one test (dropped afterwards)."""
    import uuid

    import sqlalchemy
    from sqlalchemy.engine import make_url

    base = make_url(postgres_server)
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as con:
            con.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def pytest_configure(config):
    if _SET_THREADS:  # in case torch was imported before this file set OMP_NUM_THREADS
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
