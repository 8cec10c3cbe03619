"""Implementation registry: preference order, ASCEND_EXT_IMPL and use_impl overrides."""

import pytest
import torch

from ascend_ext import ops
from ascend_ext.ops import _dispatch


def test_reference_is_always_available():
    for device in ("cpu", "cuda", "npu"):
        assert _dispatch.implementations("paged_attention", device)["reference"].unavailable_reason(device) is None


def test_env_override_by_family_and_op(monkeypatch):
    monkeypatch.setenv("ASCEND_EXT_IMPL", "attention=reference")
    assert _dispatch.select("paged_attention", "cpu").name == "reference"
    monkeypatch.setenv("ASCEND_EXT_IMPL", "attention=nonexistent,paged_attention=reference")
    assert _dispatch.select("paged_attention", "cpu").name == "reference"       # op beats family
    with pytest.raises(RuntimeError, match="'nonexistent' of flash_attn_varlen"):
        _dispatch.select("flash_attn_varlen", "cpu")


def test_env_override_errors(monkeypatch):
    monkeypatch.setenv("ASCEND_EXT_IMPL", "attention")
    with pytest.raises(ValueError, match="must look like"):
        _dispatch.select("paged_attention", "cpu")
    monkeypatch.setenv("ASCEND_EXT_IMPL", "flashy=reference")
    with pytest.raises(ValueError, match="unknown op or family 'flashy'"):
        _dispatch.select("paged_attention", "cpu")


def test_use_impl_scopes_nest(monkeypatch):
    monkeypatch.delenv("ASCEND_EXT_IMPL", raising=False)
    _dispatch.register("merge_attn_states", "_test_only", "ascend_ext.ops.attention.reference:merge_attn_states",
                       devices=("cpu",), available=lambda device: "not built")
    try:
        with ops.use_impl(attention="reference"):
            assert _dispatch.select("merge_attn_states", "cpu").name == "reference"
            with ops.use_impl(merge_attn_states="_test_only"), pytest.raises(RuntimeError, match="not built"):
                _dispatch.select("merge_attn_states", "cpu")
        assert _dispatch.select("merge_attn_states", "cpu").name != "_test_only"   # unavailable never chosen
    finally:
        _dispatch._REGISTRY["merge_attn_states"][:] = [
            i for i in _dispatch._REGISTRY["merge_attn_states"] if i.name != "_test_only"]
        _dispatch.rebind()


def test_describe_lists_every_registered_op():
    table = ops.describe("cpu")
    assert {"flash_attn_varlen", "paged_attention", "reshape_and_cache", "merge_attn_states"} <= set(table)
    assert all(not v.startswith("error") for v in table.values())
