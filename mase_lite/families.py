"""Model families: what mase-lite knows about a transformer family, in one adapter per family.

Shrinking (``passes.transforms.shrink``), the search space (``search.space``: layers kept, heads per
layer, the architecture read back from a graph) and the config checks (:class:`mase_lite.models.ModelConfig`,
sampled architectures, benchmark tables) all ask the family's :class:`FamilyAdapter`; a new family
is one adapter class registered by its HF ``model_type`` values::

    @register_family("my-bert")
    class MyBertFamily(FamilyAdapter):
        layer_module = "layer"
        attention_roles = {"attn.q": "q", "attn.k": "k", "attn.v": "v", "attn.out": "o"}
        ffn_roles = {"mlp.fc1": "up", "mlp.fc2": "down"}

The adapter's contract (class attributes it declares; the methods are built on them):

* ``layer_module``: the name of the module list whose ``.<i>`` is layer ``i``, as it appears at the
  end of the ``nn_module_stack`` path of the module computing one layer (BERT ``layer``, GPT-2 ``h``,
  Llama ``layers``). ``weight_module``: the list whose ``.<i>`` owns one layer's weights in module
  paths (default: ``layer_module``; ALBERT's layers share weights, see :class:`AlbertFamily`).
* ``attention_roles`` / ``ffn_roles``: a projection's module path inside its layer -> its role.
  Attention: ``q``, ``k``, ``v``, ``qkv`` (fused: q | k | v rows, equal parts), ``o``. Feed-forward:
  ``up``, ``gate``, ``glu`` (up and gate fused: [up | gate] rows), ``down``. The first path
  component of the attention roles (``attention``, ``attn``, ``self_attn``) is the attention
  module: eager attention's matmuls inside it are the attention computation.
* Head layout: ``config_keys`` maps ``hidden_size`` / ``num_attention_heads`` to the family's HF
  config keys where it renames them (GPT-2 ``n_embd`` / ``n_head``); ``head_dim`` in the HF config,
  when present, is the head size. ``gqa``: key/value heads may be fewer (``num_key_value_heads``);
  ``rotary``: rotary position embeddings (the head size must be even); ``heads_folded``: attention
  runs on ``[batch * heads, seq, head_dim]`` (DeBERTa) rather than ``[batch, heads, seq, head_dim]``.
* ``shared_layers``: every layer calls the same weights (ALBERT), so a layer is a *call*:
  :meth:`FamilyAdapter.layer_number` maps (module index, call number) to the layer index.

Layer indices are the checkpoint's numbering (``...layer.<i>``; ALBERT: the i-th call). Model types
without an adapter (e.g. a Mistral checkpoint) get :func:`family`'s fallback: the union of every
registered adapter's paths and roles, i.e. any layout mase-lite knows.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Optional

from .config import check_range
from .errors import ConfigError, MaseError
from .registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from torch import fx

    from .graph import MaseGraph

ATTENTION_ROLES = ("q", "k", "v", "qkv", "o")
FFN_ROLES = ("up", "gate", "glu", "down")


class FamilyAdapter:
    """One model family's layout (see the module docstring for the contract)."""

    #: The HF ``model_type`` values this adapter serves (set by :func:`register_family`).
    model_types: ClassVar[tuple[str, ...]] = ()
    layer_module: ClassVar[str] = ""
    weight_module: ClassVar[Optional[str]] = None
    attention_roles: ClassVar[Mapping[str, str]] = {}
    ffn_roles: ClassVar[Mapping[str, str]] = {}
    config_keys: ClassVar[Mapping[str, str]] = {}
    gqa: ClassVar[bool] = False
    rotary: ClassVar[bool] = False
    heads_folded: ClassVar[bool] = False
    shared_layers: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.model_types[0] if self.model_types else type(self).__name__

    # ---------------------------------------------------------------------------------- layers
    @cached_property
    def _layer_re(self) -> re.Pattern:
        return re.compile(rf"(?:^|\.)(?:{self.layer_module})\.(\d+)$")

    @cached_property
    def _weight_re(self) -> re.Pattern:
        return re.compile(rf"(?:^|\.)(?:{self.weight_module or self.layer_module})\.(\d+)(?=\.|$)")

    def layer_number(self, index: int, call: int, path: str, hf: Mapping[str, Any]) -> int:
        """The layer index of the ``call``-th call (0: the first) of layer module ``index``."""
        if call:
            raise MaseError(f"layer module {path!r} is called more than once and the {self.name!r} family does "
                            f"not share layers; which call is which layer is unknown")
        return index

    def layer_call(self, stack: Mapping[str, Any] | None, hf: Mapping[str, Any]) -> int | None:
        """The layer a node computes, from its ``nn_module_stack`` (outermost layer module; torch.export
        marks the k-th repeated call of a module with an ``@k`` key suffix), or None."""
        for key, (path, _cls) in (stack or {}).items():
            m = self._layer_re.search(path or "")
            if m:
                call = int(key.rsplit("@", 1)[1]) if "@" in key else 0
                return self.layer_number(int(m.group(1)), call, path, hf)
        return None

    def split_weight_path(self, path: str) -> tuple[str, str] | None:
        """``(layer key, path inside the layer)`` of a module path owning layer weights, or None."""
        m = None
        for m in self._weight_re.finditer(path or ""):
            pass
        return None if m is None else (m.group(1), path[m.end() + 1:])

    def role(self, path: str, kind: str) -> tuple[str, str] | None:
        """``(layer key, role)`` of a projection's module path; ``kind``: ``attention`` or ``ffn``."""
        split = self.split_weight_path(path)
        table = self.attention_roles if kind == "attention" else self.ffn_roles
        if split is None or split[1] not in table:
            return None
        return split[0], table[split[1]]

    def in_attention(self, path: str) -> bool:
        """Whether a module path is inside a layer's attention module."""
        split = self.split_weight_path(path)
        prefixes = {k.split(".", 1)[0] for k in self.attention_roles}
        return split is not None and split[1].split(".", 1)[0] in prefixes

    # ---------------------------------------------------------------------------------- heads
    def size(self, hf: Mapping[str, Any], name: str) -> Any:
        """Size ``name`` (``hidden_size``, ``num_attention_heads``) of an HF config dict."""
        value = hf.get(self.config_keys.get(name, name))
        return hf.get(name) if value is None else value

    def head_dim(self, hf: Mapping[str, Any]) -> int:
        """The head size: ``head_dim`` if the config has one, else hidden size / heads."""
        if hf.get("head_dim"):
            return int(hf["head_dim"])
        hidden, heads = self.size(hf, "hidden_size"), self.size(hf, "num_attention_heads")
        if not hidden or not heads:
            raise MaseError(f"the model config gives no head size (hidden_size / num_attention_heads) for the "
                            f"{self.name!r} family")
        return int(hidden) // int(heads)

    def heads_in(self, shape: tuple, batch: Any) -> int | None:
        """Heads of an attention input of metadata ``shape`` (``batch``: the inputs' batch size, an int
        or the symbol ``"batch"``), or None if the shape does not show them."""
        if self.heads_folded:
            if len(shape) != 3:
                return None
            from .metadata import concrete

            (rows, b) = concrete((shape[0], batch))
            return rows // b if b and rows % b == 0 else None
        return shape[1] if len(shape) == 4 and isinstance(shape[1], int) else None

    def head_layout_problem(self, hidden: int, heads: int, kv_heads: int | None = None,
                            model_type: str | None = None, path: str | None = None) -> str | None:
        """Why ``hidden`` / ``heads`` / ``kv_heads`` cannot make this family's attention, or None.
        ``path``: the config prefix naming the fields (``"model"``: ``model.hidden_size = ...``); None:
        a sampled architecture's plain wording (``hidden_size 30 is not ...``)."""
        p = f"{path}." if path else ""
        if hidden % heads:
            if path is None:
                return (f"hidden_size {hidden} is not divisible by num_attention_heads {heads} "
                        f"(each head needs hidden_size / num_attention_heads dimensions)")
            return (f"{p}hidden_size = {hidden} is not divisible by {p}num_attention_heads = {heads}; each head "
                    f"needs hidden_size / num_attention_heads dimensions")
        if kv_heads is not None:
            if not self.gqa:
                gqa = [t for t, a in FAMILIES.items() if a.gqa]
                return (f"{p}num_key_value_heads is only for model_type {' / '.join(gqa)} (grouped-query attention), "
                        f"not {model_type or self.name!r}; remove it")
            try:
                check_range(p + "num_key_value_heads", kv_heads, 1, heads)
            except ConfigError as exc:
                return str(exc)
            if heads % kv_heads:
                return (f"{p}num_key_value_heads = {kv_heads} does not divide {p}num_attention_heads = {heads}; each "
                        f"key/value head serves a whole group of query heads")
        if self.rotary and (hidden // heads) % 2:
            return (f"{p}hidden_size / {p}num_attention_heads = {hidden // heads} must be even for model_type "
                    f"{model_type or self.name!r} (rotary position embeddings)")
        return None


#: model_type -> its adapter (one instance per adapter class).
FAMILIES: Registry[FamilyAdapter] = Registry("model family", identity=type)


def register_family(*model_types: str) -> Callable[[type[FamilyAdapter]], type[FamilyAdapter]]:
    """Class decorator: register an adapter for the HF ``model_types`` (a taken type is an error)."""
    if not model_types:
        raise ValueError("register_family needs at least one model_type")

    def deco(cls: type[FamilyAdapter]) -> type[FamilyAdapter]:
        missing = [a for a in ("layer_module", "attention_roles", "ffn_roles") if not getattr(cls, a)]
        if missing:
            raise ValueError(f"model family {cls.__name__} does not declare {', '.join(missing)}")
        bad = sorted({r for r in cls.attention_roles.values() if r not in ATTENTION_ROLES}
                     | {r for r in cls.ffn_roles.values() if r not in FFN_ROLES})
        if bad:
            raise ValueError(f"model family {cls.__name__}: unknown roles {bad}")
        adapter = cls()
        for t in model_types:  # every type checked before any is registered
            if t in FAMILIES and type(FAMILIES[t]) is not cls:
                FAMILIES.register(t, adapter)  # raises: the type is taken
        cls.model_types = tuple(model_types)
        for t in model_types:
            FAMILIES.register(t, adapter)
        _AnyFamily.cache_clear()
        return cls

    return deco


class _AnyFamily(FamilyAdapter):
    """Every registered layout at once: the fallback for model types without an adapter."""

    _instance: ClassVar[Optional["_AnyFamily"]] = None

    def __init__(self) -> None:
        adapters = list(dict.fromkeys(FAMILIES.values()))
        self.adapters = adapters
        self.layer_module = "|".join(dict.fromkeys(a.layer_module for a in adapters))
        self.weight_module = "|".join(dict.fromkeys(a.weight_module or a.layer_module for a in adapters))
        self.attention_roles = {k: v for a in adapters for k, v in a.attention_roles.items()}
        self.ffn_roles = {k: v for a in adapters for k, v in a.ffn_roles.items()}

    @classmethod
    def get(cls) -> "_AnyFamily":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    @classmethod
    def cache_clear(cls) -> None:
        cls._instance = None

    def layer_call(self, stack: Mapping[str, Any] | None, hf: Mapping[str, Any]) -> int | None:
        for key, entry in (stack or {}).items():
            for a in self.adapters:
                found = a.layer_call({key: entry}, hf)
                if found is not None:
                    return found
        return None

    def size(self, hf: Mapping[str, Any], name: str) -> Any:
        keys = [name] + [a.config_keys[name] for a in self.adapters if name in a.config_keys]
        return next((hf[k] for k in keys if hf.get(k) is not None), None)


def family(model_type: str | None) -> FamilyAdapter:
    """The adapter of ``model_type``; for a type without one, the union of all layouts (see above)."""
    if isinstance(model_type, str) and model_type in FAMILIES:
        return FAMILIES[model_type]
    return _AnyFamily.get()


def family_of(graph: "MaseGraph") -> FamilyAdapter:
    """The adapter of a traced graph (its ``model_info["hf_config"]["model_type"]``)."""
    return family(_hf(graph).get("model_type"))


def _hf(graph: "MaseGraph") -> Mapping[str, Any]:
    return (getattr(graph, "model_info", None) or {}).get("hf_config") or {}


def layer_calls(graph: "MaseGraph") -> dict[int, list["fx.Node"]]:
    """Layer index -> the call_function nodes computing that layer, in graph order (layers sorted)."""
    fam, hf = family_of(graph), _hf(graph)
    out: dict[int, list[fx.Node]] = {}
    for n in graph.nodes:
        if n.op == "call_function":
            i = fam.layer_call(n.meta.get("nn_module_stack"), hf)
            if i is not None:
                out.setdefault(i, []).append(n)
    return dict(sorted(out.items()))


def head_layout_problem(hidden_size: int, num_attention_heads: int, num_key_value_heads: int | None = None,
                        model_type: str | None = None, path: str | None = None) -> str | None:
    """Why these sizes cannot make attention heads in family ``model_type`` (None: any family), or None.
    The one check of ``hidden_size`` divisible by ``num_attention_heads`` (and, per family, key/value
    heads and rotary head sizes); see :meth:`FamilyAdapter.head_layout_problem` for ``path``."""
    return family(model_type).head_layout_problem(int(hidden_size), int(num_attention_heads), num_key_value_heads,
                                                  model_type, path)


def gqa_model_types() -> tuple[str, ...]:
    """The registered model types with grouped-query attention."""
    return tuple(t for t, a in FAMILIES.items() if a.gqa)


# ------------------------------------------------------------------------------------------ the built-in families

_BERT_ATTENTION = {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
                   "attention.output.dense": "o"}
_BERT_FFN = {"intermediate.dense": "up", "output.dense": "down"}


@register_family("bert", "roberta", "electra")
class BertFamily(FamilyAdapter):
    """BERT, RoBERTa, ELECTRA: ``<prefix>.encoder.layer.<i>``, separate q/k/v."""

    layer_module = "layer"
    attention_roles = _BERT_ATTENTION
    ffn_roles = _BERT_FFN


@register_family("distilbert")
class DistilBertFamily(FamilyAdapter):
    """DistilBERT: ``distilbert.transformer.layer.<i>``, ``q_lin``/``k_lin``/``v_lin``/``out_lin``."""

    layer_module = "layer"
    attention_roles = {"attention.q_lin": "q", "attention.k_lin": "k", "attention.v_lin": "v",
                       "attention.out_lin": "o"}
    ffn_roles = {"ffn.lin1": "up", "ffn.lin2": "down"}
    config_keys = {"hidden_size": "dim", "num_attention_heads": "n_heads"}


@register_family("albert")
class AlbertFamily(FamilyAdapter):
    """ALBERT: the encoder calls layer group ``albert_layer_groups.<g>`` ``num_hidden_layers /
    num_hidden_groups`` times, and every call uses the same weights
    (``albert_layer_groups.<g>.albert_layers.<j>``, layer key ``j``). Layer ``i`` is a call:
    ``g * calls_per_group + k`` for the k-th call of group ``g``. Cutting heads or neurons cuts the
    shared weights, so every layer loses them; removing a layer saves MACs but no parameters."""

    layer_module = "albert_layer_groups"
    weight_module = "albert_layers"
    shared_layers = True
    attention_roles = {"attention.query": "q", "attention.key": "k", "attention.value": "v", "attention.dense": "o"}
    ffn_roles = {"ffn": "up", "ffn_output": "down"}

    def layer_number(self, index: int, call: int, path: str, hf: Mapping[str, Any]) -> int:
        calls = max(1, int(hf.get("num_hidden_layers", 1)) // max(1, int(hf.get("num_hidden_groups", 1))))
        return index * calls + call


@register_family("deberta-v2")
class DebertaV2Family(FamilyAdapter):
    """DeBERTa-v2/v3: BERT's layout with ``query_proj``/``key_proj``/``value_proj``; disentangled
    attention on ``[batch * heads, seq, head_dim]``."""

    layer_module = "layer"
    attention_roles = {"attention.self.query_proj": "q", "attention.self.key_proj": "k",
                       "attention.self.value_proj": "v", "attention.output.dense": "o"}
    ffn_roles = _BERT_FFN
    heads_folded = True


@register_family("modernbert")
class ModernBertFamily(FamilyAdapter):
    """ModernBERT: ``model.layers.<i>``, fused ``Wqkv``, GLU feed-forward ``Wi`` ([input | gate]), RoPE."""

    layer_module = "layers"
    attention_roles = {"attn.Wqkv": "qkv", "attn.Wo": "o"}
    ffn_roles = {"mlp.Wi": "glu", "mlp.Wo": "down"}
    rotary = True


@register_family("gpt2")
class Gpt2Family(FamilyAdapter):
    """GPT-2: ``transformer.h.<i>``, fused ``c_attn`` (its ``Conv1D`` projections traced as linears)."""

    layer_module = "h"
    attention_roles = {"attn.c_attn": "qkv", "attn.c_proj": "o"}
    ffn_roles = {"mlp.c_fc": "up", "mlp.c_proj": "down"}
    config_keys = {"hidden_size": "n_embd", "num_attention_heads": "n_head"}


@register_family("llama")
class LlamaFamily(FamilyAdapter):
    """Llama: ``model.layers.<i>``, grouped-query attention, gated feed-forward, RoPE."""

    layer_module = "layers"
    attention_roles = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v",
                       "self_attn.o_proj": "o"}
    ffn_roles = {"mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down"}
    gqa = True
    rotary = True
