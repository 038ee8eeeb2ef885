"""Text-classification data: IMDb (default) from a local mirror or the Hugging Face hub, tokenised and cached.

Where data comes from
    ``DataConfig.data_dir`` if set, else the environment variable ``MASE_LITE_DATA``, names a mirror
    directory holding ``<dataset>/{train,test}.parquet`` (columns ``text``/``label`` by default) and
    ``<tokenizer>/`` (a directory ``AutoTokenizer.from_pretrained`` loads offline). Whatever the mirror
    lacks is taken from the hub (``stanfordnlp/imdb``, ``bert-base-uncased``); if that fails too, a
    single :class:`DataError` names both places and the variable. The hub is not tried when
    ``HF_HUB_OFFLINE`` is set or when it cannot be reached within :data:`HUB_PROBE_TIMEOUT_S` seconds
    (:func:`hub_unavailable`), so without mirror and network the error comes at once.

Tokenizer
    ``DataConfig.tokenizer`` (``--tokenizer``) if set; else, for a model loaded from a checkpoint
    directory that has tokenizer files, that directory (:func:`resolve_tokenizer`); else
    ``bert-base-uncased``. A tokenizer without a pad token pads with the model's configured
    ``pad_token_id``, else with its eos token (``pad = eos``); decoder classifiers get
    ``config.pad_token_id`` set to match (:func:`resolve_pad_token`). With neither, a clear error.

Splits
    The validation split (``n_val`` rows) is carved from the training split with a seeded
    permutation; search selects on it. ``n_train`` more rows of the same permutation (default: all
    the rest) are the training rows, so the validation rows do not change with ``n_train``. The test
    split (``n_test`` seeded rows, default all) is only for final reports. Rows are shuffled here,
    which matters for the IMDb files, whose rows are sorted by label.

Cache
    Tokenised splits are saved with ``Dataset.save_to_disk`` under ``<cache>/tokenized/<key>``, where
    the key hashes the raw data's fingerprint, the tokenizer's full definition and call-time settings
    (:func:`tokenizer_fingerprint`: vocabulary, normalisation, special tokens, ``truncation_side``
    ...), ``max_length``, ``truncation``, the column names and the selected row indices: everything
    that changes the produced ids. A later call with the same key (the next trial of a
    study) loads it without tokenising. The cache is ``DataConfig.cache_dir``, else
    ``$MASE_LITE_CACHE``, else ``~/.cache/mase-lite``; nothing is ever written under the data dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np

from .config import Config, check_range
from .errors import ConfigError, DataError

log = logging.getLogger(__name__)

DATA_ENV = "MASE_LITE_DATA"
CACHE_ENV = "MASE_LITE_CACHE"
DEFAULT_CACHE = "~/.cache/mase-lite"
#: Short dataset names and the hub repositories they stand for; other names are used as hub ids as-is.
HUB_DATASETS = {"imdb": "stanfordnlp/imdb"}
MIN_MAX_LENGTH = 8
#: The tokenizer of models that bring none (built from a config, or a checkpoint without tokenizer files).
DEFAULT_TOKENIZER = "bert-base-uncased"
#: Files any of which makes a directory a tokenizer directory ``AutoTokenizer`` can load.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")
#: Seconds to wait for a TCP connection to the hub before treating it as unreachable.
HUB_PROBE_TIMEOUT_S = 1.5
_CACHE_VERSION = 2  # 2: the tokenizer fingerprint covers truncation_side and the other ENCODING_ATTRIBUTES


@dataclasses.dataclass
class DataConfig(Config):
    """Which data, how much of it and how it is tokenised.

    ``n_train=None`` uses every training row not in the validation split; ``n_test=None`` the whole
    test split. ``tokenizer``: a name under the mirror / on the hub, or a directory; ``None`` (default):
    the model checkpoint's own tokenizer files, else ``bert-base-uncased`` (:func:`resolve_tokenizer`).
    ``seed`` fixes which rows are drawn (and nothing else). ``truncation``: rows longer
    than ``max_length`` tokens keep their first quarter and last three quarters (``head_tail``, the
    default: reviews often end with the verdict; bert-tiny, one epoch of IMDb at max_length 128:
    0.854 test accuracy vs 0.816 — Sun et al. 2019 found the same for BERT) or their first
    tokens only (``head``, as in MASE's tutorial).
    """

    dataset: str = "imdb"
    data_dir: Optional[str] = None
    text_column: str = "text"
    label_column: str = "label"
    num_labels: int = 2
    tokenizer: Optional[str] = None
    n_train: Optional[int] = None
    n_val: int = 2000
    n_test: Optional[int] = None
    max_length: int = 128
    truncation: Literal["head", "head_tail"] = "head_tail"
    seed: int = 0
    cache_dir: Optional[str] = None

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        check_range(f"{p}num_labels", self.num_labels, 2)
        check_range(f"{p}max_length", self.max_length, MIN_MAX_LENGTH)
        check_range(f"{p}n_val", self.n_val, 0)
        if self.n_train is not None:
            check_range(f"{p}n_train", self.n_train, 1)
        if self.n_test is not None:
            check_range(f"{p}n_test", self.n_test, 1)
        for name in ("dataset", "text_column", "label_column"):
            if not getattr(self, name):
                raise ConfigError(f"{p}{name} must not be empty")
        if self.tokenizer is not None and not self.tokenizer.strip():
            raise ConfigError(f"{p}tokenizer must not be empty (leave it unset for the checkpoint's own or "
                              f"{DEFAULT_TOKENIZER})")


@dataclasses.dataclass
class Splits:
    """Tokenised splits: ``datasets.Dataset`` objects with columns ``input_ids``, ``labels``, ``length``
    (``None`` for a split that was not requested)."""

    train: Any
    val: Any
    test: Any
    pad_id: int = 0
    num_labels: int = 2


# --------------------------------------------------------------------------- locations


def mirror_dir(cfg: DataConfig) -> tuple[Path | None, str]:
    """The mirror directory and a phrase saying where it came from (``(None, why)`` when unset)."""
    if cfg.data_dir:
        return Path(cfg.data_dir).expanduser(), "data.data_dir"
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser(), f"${DATA_ENV}"
    return None, f"neither data.data_dir nor ${DATA_ENV} is set"


def cache_root(cfg: DataConfig | None = None) -> Path:
    """The cache directory: ``cfg.cache_dir``, else ``$MASE_LITE_CACHE``, else ``~/.cache/mase-lite``."""
    raw = (cfg.cache_dir if cfg is not None else None) or os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(raw).expanduser()


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


_PROBES: dict[tuple[str, int], str | None] = {}


def _hub_address() -> tuple[str, int]:
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_unavailable() -> str | None:
    """Why the Hugging Face hub must not be tried (``None``: try it).

    ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` set, or no TCP connection to the hub (``$HF_ENDPOINT``,
    default huggingface.co:443) within :data:`HUB_PROBE_TIMEOUT_S` s -- instead of the hub clients'
    own retries, which take about a minute offline. The probe runs once per process and address.
    """
    import socket

    if _hub_offline():
        return "hub access is disabled (HF_HUB_OFFLINE)"
    addr = _hub_address()
    if addr not in _PROBES:
        try:
            with socket.create_connection(addr, timeout=HUB_PROBE_TIMEOUT_S):
                _PROBES[addr] = None
        except OSError as exc:
            _PROBES[addr] = (f"not tried: the hub at {addr[0]}:{addr[1]} is unreachable "
                             f"({type(exc).__name__}: {exc or 'timed out'}); no network?")
            log.info("%s", _PROBES[addr])
    return _PROBES[addr]


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]


# --------------------------------------------------------------------------- tokenizer


def has_tokenizer_files(path: str | Path) -> bool:
    """Whether directory ``path`` holds tokenizer files (:data:`TOKENIZER_FILES`)."""
    path = Path(path).expanduser()
    return path.is_dir() and any((path / f).is_file() for f in TOKENIZER_FILES)


def checkpoint_dir(model: Any) -> Path | None:
    """The local checkpoint directory ``model`` was loaded from (``from_pretrained``'s ``name_or_path``;
    for a MaseGraph, its source config's), or ``None``."""
    raw = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not raw:
        info = getattr(model, "model_info", None)
        raw = ((info or {}).get("hf_config") or {}).get("_name_or_path") if isinstance(info, dict) else None
    if not isinstance(raw, str) or not raw:
        return None
    path = Path(raw).expanduser()
    return path if path.is_dir() else None


def resolve_tokenizer(cfg: DataConfig, model: Any = None) -> DataConfig:
    """``cfg`` with the tokenizer to use filled in: ``cfg.tokenizer`` when set; else the directory of
    ``model``'s checkpoint when it has tokenizer files; else :data:`DEFAULT_TOKENIZER`."""
    if cfg.tokenizer is not None:
        return cfg
    ckpt = checkpoint_dir(model) if model is not None else None
    if ckpt is not None and has_tokenizer_files(ckpt):
        log.info("using the checkpoint's own tokenizer %s (data.tokenizer overrides)", ckpt)
        return cfg.replace(tokenizer=str(ckpt.resolve()))
    if ckpt is not None:
        log.info("checkpoint %s has no tokenizer files; using %s", ckpt, DEFAULT_TOKENIZER)
    return cfg.replace(tokenizer=DEFAULT_TOKENIZER)


def _local_tokenizer(cfg: DataConfig) -> tuple[Path | None, str]:
    """(the local directory of ``cfg``'s tokenizer, or the path looked for / None; where it came from)."""
    name = cfg.tokenizer or DEFAULT_TOKENIZER
    root, origin = mirror_dir(cfg)
    local = root / name if root is not None else None
    if local is None or not local.is_dir():
        direct = Path(name).expanduser()
        if has_tokenizer_files(direct):
            local, origin = direct, "data.tokenizer"
    return local, origin


def check_tokenizer(cfg: DataConfig) -> None:
    """Raise :func:`load_tokenizer`'s DataError now if ``cfg``'s tokenizer cannot be found; a local
    directory is only located, not loaded (the data step loads it)."""
    local, _ = _local_tokenizer(cfg)
    if local is None or not local.is_dir():
        load_tokenizer(cfg)  # the hub: loads it, or the one clear error (fast offline)


def load_tokenizer(cfg: DataConfig):
    """The tokenizer ``cfg.tokenizer`` (unset: :data:`DEFAULT_TOKENIZER`): ``<mirror>/<tokenizer>/`` if
    present, else a tokenizer directory at that path, else the hub (see :func:`hub_unavailable`)."""
    from transformers import AutoTokenizer

    name = cfg.tokenizer or DEFAULT_TOKENIZER
    local, origin = _local_tokenizer(cfg)
    if local is not None and local.is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(local), local_files_only=True)
        except Exception as exc:  # a broken mirror is an error, not a reason to go online
            raise DataError(f"tokenizer directory {local} (from {origin}) could not be loaded: {_short(exc)}") from exc
    where = f"no directory {local} (from {origin})" if local is not None else origin
    hub_why = hub_unavailable()
    if hub_why is None:
        try:
            tok = AutoTokenizer.from_pretrained(name)
            log.info("tokenizer %r loaded from the Hugging Face hub (%s)", name, where)
            return tok
        except Exception as exc:
            hub_why = _short(exc)
    raise DataError(
        f"tokenizer {name!r} not found: {where}, and the Hugging Face hub model {name!r} "
        f"could not be loaded ({hub_why}); set {DATA_ENV} (or data.data_dir) to a directory containing "
        f"{name}/ with the tokenizer files"
    )


def resolve_pad_token(tokenizer, model: Any = None) -> int:
    """The id batches are padded with, made explicit on ``tokenizer`` (and on a decoder ``model``).

    The tokenizer's pad token if it has one; else ``model``'s configured ``pad_token_id`` (a checkpoint's
    ``config.pad_token_id``, or ``ModelConfig.pad_token_id`` set explicitly); else its eos token
    (``tokenizer.pad_token = tokenizer.eos_token``); else :class:`DataError`. A decoder classifier finds
    each row's last token by the pad id, so its pad id must be this one: an ``nn.Module``'s
    ``config.pad_token_id`` is set to it; a ``ModelConfig`` or a traced graph with another id is a
    :class:`ConfigError`/:class:`DataError` (it is baked into the graph).
    """
    from .models import ModelConfig, is_decoder_classifier

    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if isinstance(model, ModelConfig):
        configured = model.pad_token_id
    else:
        configured = _model_field(model, "pad_token_id") if model is not None else None
    if tokenizer.pad_token_id is None:
        if configured is not None:
            tokenizer.pad_token_id = int(configured)
            log.info("tokenizer %r has no pad token: padding with the model's pad_token_id %d", name, configured)
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
            log.info("tokenizer %r has no pad token: padding with its eos token %r (id %d)", name,
                     tokenizer.eos_token, tokenizer.pad_token_id)
        else:
            raise DataError(
                f"tokenizer {name!r} has no pad token and no eos token, and the model configures no pad_token_id; "
                "set one: model.pad_token_id (or the checkpoint's config.json pad_token_id), or use a tokenizer "
                "with a pad token"
            )
    pad = int(tokenizer.pad_token_id)
    if model is None or not is_decoder_classifier(model):
        return pad
    if isinstance(model, ModelConfig):
        if model.effective_pad_token_id() != pad:
            raise ConfigError(
                f"model.pad_token_id = {model.effective_pad_token_id()} but tokenizer {name!r} pads with id {pad}; "
                f"a {model.model_type} classifier reads each row's last non-pad token, so set model.pad_token_id = {pad}"
            )
    elif hasattr(getattr(model, "config", None), "pad_token_id"):
        if model.config.pad_token_id != pad:
            log.info("setting the decoder's config.pad_token_id = %d (tokenizer %r's pad id; was %s)", pad, name,
                     model.config.pad_token_id)
            model.config.pad_token_id = pad
    else:
        traced = _model_field(model, "pad_token_id")
        if traced != pad:
            raise DataError(
                f"this decoder graph was traced with pad_token_id = {traced} but tokenizer {name!r} pads with id {pad}; "
                "use the tokenizer it was trained with (data.tokenizer)"
            )
    return pad


#: Tokenizer attributes read at call time (not in a fast tokenizer's JSON spec) that can change the
#: ids :func:`load_splits` produces: which end ``truncation = "head"`` cuts (``truncation_side``),
#: whether special-token strings in the text are split (``split_special_tokens``), and the text
#: normalisation a slow (Python) tokenizer applies per call. ``padding_side`` is not among them:
#: splits are stored unpadded (batches are padded later, with ``Splits.pad_id``).
ENCODING_ATTRIBUTES = ("truncation_side", "split_special_tokens", "add_prefix_space", "do_lower_case",
                       "strip_accents", "tokenize_chinese_chars", "add_bos_token", "add_eos_token")


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides how ``tokenizer`` maps text to ids: its class, its
    definition (a fast tokenizer's JSON spec -- vocabulary, normaliser such as lower-casing,
    pre-tokeniser, model, added and special tokens, post-processor -- or a slow one's vocabulary and
    init arguments) and the call-time :data:`ENCODING_ATTRIBUTES`."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    attrs = {name: getattr(tokenizer, name, None) for name in ENCODING_ATTRIBUTES}
    h.update(json.dumps(attrs, sort_keys=True, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # a fast tokenizer: its JSON spec defines the whole text -> ids mapping
        spec = json.loads(backend.to_str())
        # truncation/padding are call-time state (set by every ``tokenizer(..., truncation=True)`` from
        # max_length, in the cache key on its own, and truncation_side, in ``attrs``)
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
        skip = {"name_or_path", "vocab_file", "merges_file", "tokenizer_file", "is_local", "local_files_only"}
        kwargs = {k: v for k, v in getattr(tokenizer, "init_kwargs", {}).items() if k not in skip}
        h.update(json.dumps(kwargs, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- raw splits


class _Raw:
    """One raw split: a lazily read table, its number of rows and a content fingerprint."""

    def __init__(self, num_rows: int, fingerprint: str, loader, source: str):
        self.num_rows = num_rows
        self.fingerprint = fingerprint
        self._loader = loader
        self.source = source
        self._ds = None

    def dataset(self):
        if self._ds is None:
            self._ds = self._loader()
        return self._ds


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_hash(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()[:16]
    return _FILE_HASHES[key]


def _local_split(path: Path, cfg: DataConfig) -> _Raw:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except Exception as exc:
        raise DataError(f"{path} is not a readable parquet file: {_short(exc)}") from exc
    names = meta.schema_arrow.names
    _check_columns(names, cfg, str(path))

    def load():
        import datasets

        table = pq.read_table(path, columns=[cfg.text_column, cfg.label_column])
        return datasets.Dataset(datasets.table.InMemoryTable(table))

    return _Raw(meta.metadata.num_rows, _file_hash(path), load, str(path))


def _check_columns(names: list[str], cfg: DataConfig, where: str) -> None:
    for field, col in (("text_column", cfg.text_column), ("label_column", cfg.label_column)):
        if col not in names:
            raise DataError(
                f"{where} has no column {col!r} (data.{field}); its columns are: {', '.join(names) or '(none)'}"
            )


def _raw_splits(cfg: DataConfig) -> dict[str, _Raw]:
    root, origin = mirror_dir(cfg)
    files = {s: root / cfg.dataset / f"{s}.parquet" for s in ("train", "test")} if root is not None else {}
    if files and all(p.is_file() for p in files.values()):
        return {s: _local_split(p, cfg) for s, p in files.items()}
    if files:
        missing = ", ".join(str(p) for p in files.values() if not p.is_file())
        where = f"{missing} not found (mirror from {origin})"
    else:
        where = origin
    hub_id = HUB_DATASETS.get(cfg.dataset, cfg.dataset)
    hub_why = hub_unavailable()
    if hub_why is None:
        try:
            import datasets

            loaded = datasets.load_dataset(hub_id)
            out = {}
            for s in ("train", "test"):
                ds = loaded[s]
                _check_columns(list(ds.column_names), cfg, f"hub dataset {hub_id!r} split {s!r}")
                ds = ds.select_columns([cfg.text_column, cfg.label_column])
                out[s] = _Raw(len(ds), ds._fingerprint, lambda ds=ds: ds, f"hub:{hub_id}/{s}")
            log.info("dataset %r loaded from the Hugging Face hub (%s)", hub_id, where)
            return out
        except DataError:
            raise
        except Exception as exc:
            hub_why = _short(exc)
    raise DataError(
        f"dataset {cfg.dataset!r} not found: {where}, and the Hugging Face hub dataset {hub_id!r} could not be "
        f"loaded ({hub_why}); set {DATA_ENV} (or data.data_dir) to a directory containing "
        f"{cfg.dataset}/train.parquet and {cfg.dataset}/test.parquet"
    )


# --------------------------------------------------------------------------- selection, tokenisation, cache


def split_indices(n_rows_train: int, n_rows_test: int, cfg: DataConfig) -> dict[str, np.ndarray]:
    """The seeded row indices of each split (validation first in the training permutation)."""
    rng = np.random.default_rng([cfg.seed, 0])
    perm = rng.permutation(n_rows_train)
    n_val = cfg.n_val
    avail = n_rows_train - n_val
    if avail < 1:
        raise DataError(f"data.n_val = {n_val} leaves no training rows: the training split has {n_rows_train} rows")
    n_train = avail if cfg.n_train is None else cfg.n_train
    if n_train > avail:
        raise DataError(
            f"data.n_train = {n_train} is larger than the training split allows: it has {n_rows_train} rows, "
            f"{n_val} of which are the validation split (data.n_val); use n_train <= {avail}"
        )
    n_test = n_rows_test if cfg.n_test is None else cfg.n_test
    if n_test > n_rows_test:
        raise DataError(f"data.n_test = {n_test} is larger than the test split ({n_rows_test} rows)")
    test_perm = np.random.default_rng([cfg.seed, 1]).permutation(n_rows_test)
    return {"val": perm[:n_val], "train": perm[n_val : n_val + n_train], "test": test_perm[:n_test]}


def _cache_key(raw: _Raw, idx: np.ndarray, tok_fp: str, cfg: DataConfig) -> str:
    h = hashlib.sha256()
    parts = [_CACHE_VERSION, raw.fingerprint, tok_fp, cfg.max_length, cfg.text_column, cfg.label_column]
    if cfg.truncation != "head":
        parts.append(cfg.truncation)
    h.update(json.dumps(parts).encode())
    h.update(np.ascontiguousarray(idx, dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


def _special_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single sequence (e.g. [CLS], [SEP])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    raise DataError(f"data.truncation = 'head_tail' is not supported by tokenizer {type(tokenizer).__name__}")


def _encode(tokenizer, texts: list[str], cfg: DataConfig) -> list[list[int]]:
    if cfg.truncation == "head":
        return tokenizer(texts, truncation=True, max_length=cfg.max_length)["input_ids"]
    before, after = _special_wrap(tokenizer)
    room = cfg.max_length - len(before) - len(after)
    head = room // 4
    out = []
    for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        if len(ids) > room:
            ids = ids[:head] + ids[len(ids) - (room - head) :]
        out.append(before + ids + after)
    return out


def _tokenize(raw: _Raw, idx: np.ndarray, tokenizer, cfg: DataConfig):
    import datasets
    import pyarrow as pa

    table = raw.dataset().select(idx.tolist()).with_format("arrow")[:]
    label_col = table.column(cfg.label_column)
    if not (pa.types.is_integer(label_col.type) or pa.types.is_boolean(label_col.type)):
        raise DataError(
            f"{raw.source}: column {cfg.label_column!r} (data.label_column) must hold integer labels, got {label_col.type}"
        )
    text_col = table.column(cfg.text_column)
    if not (pa.types.is_string(text_col.type) or pa.types.is_large_string(text_col.type)):
        raise DataError(
            f"{raw.source}: column {cfg.text_column!r} (data.text_column) must hold strings, got {text_col.type}"
        )
    if label_col.null_count or text_col.null_count:
        raise DataError(f"{raw.source}: columns {cfg.text_column!r}/{cfg.label_column!r} contain missing values")
    labels = label_col.to_numpy().astype(np.int64)
    texts = text_col.to_pylist()
    ids = _encode(tokenizer, texts, cfg) if texts else []
    feats = datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "labels": datasets.Value("int64"),
            "length": datasets.Value("int32"),
        }
    )
    return datasets.Dataset.from_dict(
        {"input_ids": ids, "labels": labels.astype(np.int64), "length": [len(x) for x in ids]}, features=feats
    )


@contextlib.contextmanager
def _quiet_datasets():
    """Silence datasets' own progress bars (ours is the training bar)."""
    from datasets import utils as ds_utils

    was = ds_utils.is_progress_bar_enabled()
    ds_utils.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            ds_utils.enable_progress_bars()


def _load_or_tokenize(raw: _Raw, idx: np.ndarray, tokenizer, tok_fp: str, cfg: DataConfig, name: str):
    import datasets

    if len(idx) == 0:  # (n_val = 0) datasets cannot save an empty table; nothing to cache anyway
        return _tokenize(raw, idx, tokenizer, cfg)
    path = cache_root(cfg) / "tokenized" / _cache_key(raw, idx, tok_fp, cfg)
    if (path / "dataset_info.json").is_file():
        try:
            ds = datasets.load_from_disk(str(path))
            log.debug("%s split: cache hit %s", name, path)
            return ds
        except Exception as exc:  # a damaged entry is rebuilt
            log.warning("ignoring unreadable cache entry %s (%s)", path, _short(exc))
    log.info("tokenising %d %s rows (max_length=%d)", len(idx), name, cfg.max_length)
    ds = _tokenize(raw, idx, tokenizer, cfg)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        with _quiet_datasets():
            ds.save_to_disk(str(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a cache entry is as readable as any file
        try:
            os.replace(tmp, path)
        except OSError:  # another process wrote the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
        return datasets.load_from_disk(str(path))
    except OSError as exc:
        log.warning("could not write the tokenised cache under %s (%s); set %s to a writable directory", path.parent, exc, CACHE_ENV)
        return ds


def _check_labels(ds, cfg: DataConfig, source: str) -> None:
    if len(ds) == 0:
        return
    labels = ds.with_format("arrow")[:].column("labels").to_numpy()
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= cfg.num_labels:
        raise DataError(
            f"{source}: column {cfg.label_column!r} has labels in [{lo}, {hi}], outside "
            f"[0, {cfg.num_labels - 1}] (data.num_labels = {cfg.num_labels})"
        )


def load_splits(cfg: DataConfig, tokenizer=None, splits: Sequence[str] = ("train", "val", "test")) -> Splits:
    """Seeded, tokenised train/val/test splits of ``cfg.dataset`` (cached on disk; see the module doc).

    ``tokenizer`` defaults to :func:`load_tokenizer` ``(cfg)``. Only the names in ``splits`` are
    tokenised; the others are ``None``.
    """
    unknown = [s for s in splits if s not in ("train", "val", "test")]
    if unknown:
        raise ConfigError(f"unknown split {unknown[0]!r}; choose from 'train', 'val', 'test'")
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg)
    raw = _raw_splits(cfg)
    idx = split_indices(raw["train"].num_rows, raw["test"].num_rows, cfg)
    tok_fp = tokenizer_fingerprint(tokenizer)
    out: dict[str, Any] = {"train": None, "val": None, "test": None}
    for name, src in (("train", "train"), ("val", "train"), ("test", "test")):
        if name not in splits:
            continue
        out[name] = _load_or_tokenize(raw[src], idx[name], tokenizer, tok_fp, cfg, name)
        _check_labels(out[name], cfg, raw[src].source)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Splits(out["train"], out["val"], out["test"], pad_id=int(pad_id), num_labels=cfg.num_labels)


# --------------------------------------------------------------------------- model/data compatibility checks


def _model_field(obj, name: str):
    """``name`` from an HF config, a model's ``.config``, or a MaseGraph's ``model_info``."""
    for source in (obj, getattr(obj, "config", None)):
        if source is not None and getattr(source, name, None) is not None:
            return getattr(source, name)
    info = getattr(obj, "model_info", None) or {}
    if info.get(name) is not None:
        return info[name]
    return (info.get("hf_config") or {}).get(name)


def _position_limit(model_config_or_limit) -> int | None:
    if isinstance(model_config_or_limit, int):
        return model_config_or_limit
    limit = _model_field(model_config_or_limit, "max_position_embeddings")
    return int(limit) if limit is not None else None


def check_max_length(model_config_or_limit, max_length: int) -> None:
    """Raise ConfigError unless ``8 <= max_length <=`` the model's position limit.

    Accepts an int limit, a config with ``max_position_embeddings``, a model with such a ``.config``
    or a MaseGraph (its ``model_info``); with no known limit only the lower bound is checked.
    """
    limit = _position_limit(model_config_or_limit)
    if max_length < MIN_MAX_LENGTH or (limit is not None and max_length > limit):
        hi = "" if limit is None else f" and at most the model's max_position_embeddings ({limit})"
        raise ConfigError(f"data.max_length = {max_length} is out of range; it must be at least {MIN_MAX_LENGTH}{hi}")


def check_vocab(tokenizer, model) -> None:
    """Raise DataError if the tokenizer can produce ids the model's input embedding has no row for."""
    n_tok = len(tokenizer)
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        emb = None
    n_emb = getattr(emb, "num_embeddings", None)
    if n_emb is None:
        n_emb = _model_field(model, "vocab_size")
    if n_emb is None:
        raise DataError("check_vocab: the model has neither get_input_embeddings() nor a config with vocab_size")
    if n_tok > n_emb:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(
            f"tokenizer {name!r} has {n_tok} tokens but the model's embedding has only {n_emb} rows; "
            f"use a model with vocab_size >= {n_tok} or the matching tokenizer (data.tokenizer)"
        )


def load_checked_splits(cfg: DataConfig, model, splits: Sequence[str] = ("train", "val", "test")) -> Splits:
    """The one way to get data for a model: choose the tokenizer (:func:`resolve_tokenizer`: the
    checkpoint's own by default), check ``cfg.max_length`` against its positions, load the tokenizer,
    check its vocabulary against the model's embedding, settle the pad token (:func:`resolve_pad_token`),
    then load the ``splits``.

    ``model`` is an ``nn.Module``, a ``MaseGraph`` or a config (``ModelConfig``, an HF config) --
    anything :func:`check_max_length` and :func:`check_vocab` read. Errors come before any
    tokenising.
    """
    cfg = resolve_tokenizer(cfg, model)
    check_max_length(model, cfg.max_length)
    tokenizer = load_tokenizer(cfg)
    check_vocab(tokenizer, model)
    resolve_pad_token(tokenizer, model)
    return load_splits(cfg, tokenizer, splits)

