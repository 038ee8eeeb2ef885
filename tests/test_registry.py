"""One rule for every registry (passes, number formats, samplers, model families): a name is registered
once. A second, different entry under a taken name is one DuplicateRegistration naming the registry,
the name and what holds it, and leaves the registry as it was; the same entry again is a no-op."""

from __future__ import annotations

import pytest

from mase_lite.errors import ConfigError, MaseError
from mase_lite.registry import DuplicateRegistration, Registry


def _other(*args, **kwargs):
    raise AssertionError("never called")


def test_the_rule():
    reg = Registry("widget")
    assert reg.register("a", _other) is _other
    reg.register("a", _other)  # the same entry again: nothing happens
    with pytest.raises(DuplicateRegistration, match=r"^widget 'a' is already registered \(by [\w.]*_other\); "
                                                    r"cannot register .*<lambda> under the same name"):
        reg.register("a", lambda: None)
    with pytest.raises(DuplicateRegistration):
        reg["a"] = len  # item assignment follows the rule too
    assert dict(reg) == {"a": _other}
    with pytest.raises(DuplicateRegistration, match="widget name must be a non-empty string"):
        reg.register("", _other)
    assert isinstance(DuplicateRegistration("x"), MaseError) and isinstance(DuplicateRegistration("x"), ValueError)
    with pytest.raises(ConfigError, match=r"sampler = 'b' is not a registered widget; choose one of: 'a'"):
        reg.lookup("b", "sampler")
    assert reg.unregister("a") is _other and "a" not in reg
    reg.register("a", len)  # free again


def _register_pass():
    from passes.registry import register_pass
    from passes.transforms.shrink import PruneFFNConfig

    register_pass("prune_ffn", PruneFFNConfig, kind="transform")(_other)


def _register_format():
    from passes.formats import get_config_cls, register_format
    from passes.formats.base import NumberFormat

    class OtherInteger(NumberFormat):
        pass

    register_format(get_config_cls("integer"))(OtherInteger)


def _register_sampler():
    from search.samplers import register_sampler

    register_sampler("tpe")(_other)


def _register_family():
    from mase_lite.families import FamilyAdapter, register_family

    class OtherBert(FamilyAdapter):
        layer_module = "layer"
        attention_roles = {"attn.o": "o"}
        ffn_roles = {"mlp.down": "down"}

    register_family("bert")(OtherBert)


def _entries():
    from mase_lite.families import FAMILIES
    from passes.formats.base import _FORMATS, get_format
    from passes.registry import PASSES, get_pass
    from search.samplers import SAMPLERS

    get_pass("prune_ffn"), get_format("integer")  # built-ins loaded
    return {"pass": (PASSES, "prune_ffn", "passes.transforms.shrink.prune_ffn"),
            "number format": (_FORMATS, "integer", "passes.formats.integer.IntegerFormat"),
            "sampler": (SAMPLERS, "tpe", "search.samplers._tpe"),
            "model family": (FAMILIES, "bert", "mase_lite.families.BertFamily")}


@pytest.mark.parametrize("kind, register", [("pass", _register_pass), ("number format", _register_format),
                                            ("sampler", _register_sampler), ("model family", _register_family)])
def test_every_registry_refuses_a_taken_name(kind, register):
    registry, name, holder = _entries()[kind]
    before = dict(registry)
    with pytest.raises(DuplicateRegistration) as err:
        register()
    assert str(err.value).startswith(f"{kind} {name!r} is already registered (by {holder}); cannot register ")
    assert dict(registry) == before  # nothing replaced (samplers used to be overwritten silently)


def test_registering_the_same_entry_again_is_a_no_op():
    from mase_lite.families import FAMILIES, BertFamily, register_family
    from passes.formats import get_config_cls, get_format, register_format
    from passes.registry import PASSES, get_pass, register_pass
    from search.samplers import SAMPLERS, _tpe, register_sampler

    spec = get_pass("prune_ffn")
    register_pass("prune_ffn", spec.config_cls, kind="transform")(spec.fn)
    assert PASSES["prune_ffn"] is spec
    fmt = get_format("integer")
    assert register_format(get_config_cls("integer"))(fmt) is fmt
    assert register_sampler("tpe")(_tpe) is _tpe and SAMPLERS["tpe"] is _tpe
    adapter = FAMILIES["bert"]
    register_family("bert", "roberta", "electra")(BertFamily)
    assert FAMILIES["bert"] is adapter
