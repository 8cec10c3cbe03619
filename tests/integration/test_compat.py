"""integration/compat.py: the supported vLLM range, stepping aside outside it, backend
names per release, and the MLA prefill routing (with its controls)."""

import logging
import types

import pytest

import ascend_ext
from ascend_ext.integration import compat

from .vllm_runner import needs_vllm


@pytest.mark.parametrize("version,inside", [
    ("0.29.9", False), ("0.30.0", True), ("0.31.2", True), ("0.32.0+cpu", True), ("0.33.0rc1", True),
    ("0.34.0", False), ("1.0.0", False), ("dev", False)])
def test_supported_range(version, inside):
    assert (compat.unsupported_reason(version) is None) == inside


@pytest.fixture
def vllm_release(monkeypatch):
    """Pretend a vLLM release is installed (clears the per-process caches)."""
    def pretend(version):
        monkeypatch.setattr(compat, "vllm_version", lambda: version)
        compat.vllm_supported.cache_clear()
        compat.string_backend_names.cache_clear()

    yield pretend
    compat.vllm_supported.cache_clear()
    compat.string_backend_names.cache_clear()


def test_steps_aside_outside_the_range_with_one_warning(vllm_release, monkeypatch, caplog):
    monkeypatch.delenv("ASCEND_EXT_DISABLE", raising=False)
    registered = []
    monkeypatch.setattr("ascend_ext.integration.register_backends", lambda: registered.append(True))
    vllm_release("0.29.1")
    with caplog.at_level(logging.WARNING, logger="ascend_ext"):
        assert ascend_ext.register() is None
        ascend_ext.register_general()
        ascend_ext.register()
    warnings = [r for r in caplog.records if "outside the supported range" in r.getMessage()]
    assert len(warnings) == 1 and registered == []
    vllm_release("0.32.0")
    assert compat.vllm_supported()   # control: inside the range it does not step aside


def test_backend_name_per_release(vllm_release):
    vllm_release("0.30.0")
    assert compat.attention_backend_name("ASCEND_EXT") == "CUSTOM"
    vllm_release("0.32.0")
    assert compat.attention_backend_name("ASCEND_EXT") == "ASCEND_EXT"


@needs_vllm
def test_mla_prefill_routing(monkeypatch):
    import vllm.model_executor.layers.attention.mla_attention as mla_attention

    theirs = types.SimpleNamespace(name="theirs")
    ours = types.SimpleNamespace(name="ours")
    monkeypatch.setattr(mla_attention, "get_mla_prefill_backend", lambda cfg: theirs)
    compat.route_mla_prefill(lambda: ours)
    assert mla_attention.get_mla_prefill_backend(None) is ours
    compat.route_mla_prefill(lambda: None)           # our MLA backend does not serve: theirs
    assert mla_attention.get_mla_prefill_backend(None) is theirs
    # someone (vllm-ascend's patch) replaces the selector after us: the next routing re-wraps it
    monkeypatch.setattr(mla_attention, "get_mla_prefill_backend", lambda cfg: "patched")
    assert mla_attention.get_mla_prefill_backend(None) == "patched"
    compat.route_mla_prefill(lambda: ours)
    assert mla_attention.get_mla_prefill_backend(None) is ours
    assert mla_attention.get_mla_prefill_backend.wrapped(None) == "patched"
