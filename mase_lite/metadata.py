"""Per-node metadata: the typed record in ``node.meta["mase"]`` and how it is computed.

:func:`annotate` fills a :class:`NodeMeta` for every node of a GraphModule from what ``torch.export``
left in ``node.meta`` (``val`` fake tensors, ``nn_module_stack``) and from the node's target.
Shapes keep the dynamic axes symbolic: a dimension is an ``int`` or a string expression over the
names ``batch`` and ``seq`` (e.g. ``"batch*seq"``); :func:`concrete` evaluates one for given sizes.

Functions that transform passes put into the graph may declare the op kind they implement with a
``_mase_op`` attribute (e.g. ``compressed_linear._mase_op = "linear"``), so re-annotating a
transformed graph keeps its semantics.

Norms written by hand (HF's ``LlamaRMSNorm`` and kin: pow, mean, rsqrt, mul) are recognised by their
module class (:func:`is_rms_norm_class`): every computing node inside such a module is a
``layer_norm`` node. Fused query/key/value projections (GPT-2's ``c_attn``, ModernBERT's ``Wqkv``;
:data:`FUSED_QKV_MODULES`) are ``linear`` nodes whose :attr:`NodeMeta.fused_qkv` gives the output
features of the query, key and value parts, in that order along the output dimension.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Any, Iterable

import networkx as nx
import sympy
import torch
from torch import fx

OP_KINDS = (
    "linear",
    "embedding",
    "layer_norm",
    "attention",
    "matmul",
    "activation",
    "elementwise",
    "view",
    "dropout",
    "placeholder",
    "output",
    "other",
)

_KIND_BY_ATEN_NAME = {
    **dict.fromkeys(["linear"], "linear"),
    **dict.fromkeys(["embedding", "embedding_bag"], "embedding"),
    **dict.fromkeys(["layer_norm", "native_layer_norm", "rms_norm"], "layer_norm"),
    **dict.fromkeys(["scaled_dot_product_attention"], "attention"),
    **dict.fromkeys(["matmul", "mm", "bmm", "baddbmm", "addmm", "einsum"], "matmul"),
    **dict.fromkeys(
        ["relu", "gelu", "tanh", "sigmoid", "silu", "softmax", "_softmax", "log_softmax", "hardtanh",
         "leaky_relu", "elu", "mish", "hardswish", "relu6", "softplus"],
        "activation",
    ),
    **dict.fromkeys(
        ["add", "sub", "rsub", "mul", "div", "neg", "pow", "exp", "log", "sqrt", "rsqrt", "where", "eq",
         "ne", "ge", "gt", "le", "lt", "__and__", "__or__", "bitwise_and", "bitwise_or", "bitwise_not",
         "logical_not", "clamp", "abs", "masked_fill", "minimum", "maximum", "erf", "reciprocal"],
        "elementwise",
    ),
    **dict.fromkeys(
        ["view", "reshape", "_unsafe_view", "transpose", "permute", "expand", "unsqueeze", "squeeze",
         "slice", "select", "contiguous", "flatten", "t", "unflatten", "split", "chunk", "clone",
         "alias", "detach"],
        "view",
    ),
    **dict.fromkeys(["dropout", "native_dropout", "feature_dropout"], "dropout"),
}


#: Norm module classes written out by hand that are not named ``*RMSNorm`` (T5's RMS norm).
RMS_NORM_CLASSES = frozenset({"T5LayerNorm", "MT5LayerNorm", "LongT5LayerNorm"})

#: ``(attention module class, projection attribute)`` of fused query/key/value projections whose output
#: is ``[q | k | v]`` in equal thirds.
FUSED_QKV_MODULES = frozenset({("GPT2Attention", "c_attn"), ("ModernBertAttention", "Wqkv")})

_NORM_OVERRIDABLE = ("elementwise", "other", "activation")


def is_rms_norm_class(name: str | None) -> bool:
    """Whether a module class name is a hand-written RMS norm (``*RMSNorm``, T5's ``T5LayerNorm``)."""
    return bool(name) and (name.endswith("RMSNorm") or name in RMS_NORM_CLASSES)


@dataclass(frozen=True)
class TensorMeta:
    """Shape (ints or symbolic strings over ``batch``/``seq``) and dtype of one tensor."""

    shape: tuple[int | str, ...]
    dtype: str


@dataclass(frozen=True)
class ParamMeta:
    """A parameter or buffer a node reads: its qualified name, shape and whether it is trainable."""

    name: str
    shape: tuple[int, ...]
    trainable: bool

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class NodeMeta:
    """The typed record in ``node.meta["mase"]``.

    ``annotations`` is where passes add their own facts (e.g. ``"quant"``, ``"prune"``), written
    with :meth:`MaseGraph.set_annotation <mase_lite.graph.MaseGraph.set_annotation>`.
    ``fused_qkv``: for a fused query/key/value projection, the output features of its q, k and v parts
    (they sum to ``out_features``); ``None`` otherwise.
    """

    op: str
    target: str
    module_path: str | None = None
    module_class: str | None = None
    inputs: list[TensorMeta] = field(default_factory=list)
    outputs: list[TensorMeta] = field(default_factory=list)
    params: list[ParamMeta] = field(default_factory=list)
    in_features: int | None = None
    out_features: int | None = None
    annotations: dict[str, Any] = field(default_factory=dict)
    fused_qkv: tuple[int, int, int] | None = None

    @property
    def num_params(self) -> int:
        return sum(p.numel for p in self.params if p.trainable)

    def macs(self, batch: int = 1, seq: int = 128) -> int:
        """Multiply-accumulates of a linear/matmul/attention node for the given batch and sequence sizes."""
        if not self.inputs or not self.outputs:
            return 0
        if self.op == "linear" and self.in_features is not None:
            out = concrete(self.outputs[0].shape, batch, seq)
            rows = 1
            for d in out[:-1]:
                rows *= d
            return rows * self.in_features * (self.out_features or 0)
        if self.op == "matmul" and len(self.inputs) >= 2:
            a = concrete(self.inputs[0].shape, batch, seq)
            out = concrete(self.outputs[0].shape, batch, seq)
            n = 1
            for d in out:
                n *= d
            return n * (a[-1] if a else 1)
        if self.op == "attention" and len(self.inputs) >= 3:
            q = concrete(self.inputs[0].shape, batch, seq)
            k = concrete(self.inputs[1].shape, batch, seq)
            v = concrete(self.inputs[2].shape, batch, seq)
            lead = 1
            for d in q[:-2]:
                lead *= d
            return lead * q[-2] * k[-2] * (q[-1] + v[-1])  # QK^T and PV
        return 0

    def copy(self) -> "NodeMeta":
        """An independent copy (annotations deep-copied): what :meth:`MaseGraph.copy` gives each node."""
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d


def concrete(shape: Iterable[int | str], batch: int = 1, seq: int = 128) -> tuple[int, ...]:
    """Evaluate a symbolic shape for concrete batch and sequence sizes."""
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
        else:
            out.append(int(sympy.sympify(d).subs({"batch": batch, "seq": seq})))
    return tuple(out)


def op_kind(node: fx.Node) -> str:
    """Classify a node into one of :data:`OP_KINDS`."""
    if node.op in ("placeholder", "output"):
        return node.op
    if node.meta.get("mase_internal"):
        return "other"
    target = node.target
    declared = getattr(target, "_mase_op", None)
    if declared:
        return declared
    if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
        return _KIND_BY_ATEN_NAME.get(target._opname, "other")
    if node.op == "call_function" and target in (operator.getitem,):
        return "view"
    return "other"


def _symbol_names(gm: fx.GraphModule) -> dict[str, str]:
    """Map export's shape symbols (``s43``...) to ``batch``/``seq`` from the placeholders' fake values."""
    names: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for axis, dim in enumerate(val.shape):
            if isinstance(dim, torch.SymInt):
                sym = str(dim.node.expr)
                if sym.isidentifier() and sym not in names:
                    names[sym] = "batch" if axis == 0 else "seq"
    return names


def _dim(d: Any, names: dict[str, str]) -> int | str:
    if isinstance(d, int):
        return d
    expr = d.node.expr if isinstance(d, torch.SymInt) else d
    try:
        return int(expr)
    except (TypeError, ValueError):
        pass
    expr = sympy.sympify(str(expr))
    expr = expr.subs({sympy.Symbol(k): sympy.Symbol(v) for k, v in names.items()})
    return str(expr)


def _tensor_metas(value: Any, names: dict[str, str]) -> list[TensorMeta]:
    if isinstance(value, torch.Tensor):
        return [TensorMeta(tuple(_dim(d, names) for d in value.shape), str(value.dtype).replace("torch.", ""))]
    if isinstance(value, (list, tuple)):
        return [m for v in value for m in _tensor_metas(v, names)]
    return []


def _module_stack(node: fx.Node) -> list[tuple[str | None, str | None]]:
    """``(path, class name)`` of the modules a node was traced in, outermost first."""
    stack = node.meta.get("nn_module_stack")
    out = []
    for path, cls in (stack or {}).values():
        if path == "_empty_nn_module_stack_from_metadata_hook":  # export's marker for shape-only nodes
            return []
        if isinstance(cls, type):
            cls = f"{cls.__module__}.{cls.__qualname__}"
        out.append(((path or None), (str(cls).rsplit(".", 1)[-1] if cls else None)))
    return out


def _module_of(node: fx.Node) -> tuple[str | None, str | None]:
    stack = _module_stack(node)
    return stack[-1] if stack else (None, None)


def _fused_qkv(node: fx.Node, out_features: int | None) -> tuple[int, int, int] | None:
    stack = _module_stack(node)
    if len(stack) < 2 or not out_features or out_features % 3:
        return None
    (path, _), (_, parent_cls) = stack[-1], stack[-2]
    attr = (path or "").rsplit(".", 1)[-1]
    if (parent_cls, attr) in FUSED_QKV_MODULES:
        return (out_features // 3,) * 3
    return None


def node_meta(node: fx.Node, gm: fx.GraphModule, names: dict[str, str], trainable: set[str]) -> NodeMeta:
    """Compute the :class:`NodeMeta` of one node."""
    kind = op_kind(node)
    path, cls = _module_of(node)
    inputs: list[TensorMeta] = []
    params: list[ParamMeta] = []
    for arg in node.all_input_nodes:
        if arg.op == "get_attr" and node.meta.get("mase_internal"):
            continue
        if arg.op == "get_attr":
            value = operator.attrgetter(arg.target)(gm)
            if isinstance(value, torch.Tensor):
                params.append(ParamMeta(arg.target, tuple(value.shape), arg.target in trainable))
            continue
        inputs.extend(_tensor_metas(arg.meta.get("val"), names))
    if node.op == "output":
        outputs: list[TensorMeta] = []
    elif node.op == "get_attr":
        outputs = _tensor_metas(operator.attrgetter(node.target)(gm), names)
    else:
        outputs = _tensor_metas(node.meta.get("val"), names)
    if (kind in _NORM_OVERRIDABLE and node.op == "call_function" and not node.meta.get("mase_internal")
            and is_rms_norm_class(cls)):
        kind = "layer_norm"
    meta = NodeMeta(
        op=kind,
        target=_target_name(node),
        module_path=path,
        module_class=cls,
        inputs=inputs,
        outputs=outputs,
        params=params,
    )
    if kind == "linear" and params:
        weight = params[0]
        if len(weight.shape) == 2:
            meta.out_features, meta.in_features = weight.shape
            meta.fused_qkv = _fused_qkv(node, meta.out_features)
    old = node.meta.get("mase")
    if isinstance(old, NodeMeta):
        meta.annotations = dict(old.annotations)
    return meta


def _target_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    if isinstance(t, torch._ops.OpOverload):
        return str(t)
    return getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or str(t)


def annotate(gm: fx.GraphModule) -> None:
    """Put a fresh :class:`NodeMeta` in ``node.meta["mase"]`` of every node (pass annotations are kept)."""
    names = _symbol_names(gm)
    trainable = {n for n, p in gm.named_parameters() if p.requires_grad}
    for node in gm.graph.nodes:
        node.meta["mase"] = node_meta(node, gm, names, trainable)


def to_networkx(gm: fx.GraphModule) -> nx.DiGraph:
    """A ``networkx.DiGraph`` of the nodes (by name) with ``op``, ``target`` and ``mase`` attributes."""
    g = nx.DiGraph()
    for node in gm.graph.nodes:
        g.add_node(node.name, fx_op=node.op, target=_target_name(node), mase=node.meta.get("mase"))
    for node in gm.graph.nodes:
        for arg in node.all_input_nodes:
            g.add_edge(arg.name, node.name)
    return g
