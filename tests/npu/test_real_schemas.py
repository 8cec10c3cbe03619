"""Negative controls for the real-schema layer (tests/npu/real_ops.py): the torch-npu
wheel's schemas reject what a wrong adapter call would do, its meta functions reject
outputs of the wrong shape, and the emulation models the output layouts the docs state."""

import types

import pytest
import torch

from ascend_ext import ops
from ascend_ext.backends.npu import attention as npu_attention

from . import emulation, real_ops
from ..ops.naive import cu, randn


@pytest.fixture(scope="module")
def real():
    return real_ops.module()


def _qkv(rng, t=6, s=10, heads=2, d=16):
    return (randn((t, heads, d), torch.bfloat16, rng), randn((s, heads, d), torch.bfloat16, rng),
            randn((s, heads, d), torch.bfloat16, rng))


def test_schemas_are_the_wheels(real):
    schemas = real_ops.define()
    assert "int pre_tockens=2147483647" in schemas["npu_fusion_attention"]        # the op's own spelling
    assert "*, Tensor? pse_shift=None" in schemas["npu_fused_infer_attention_score"]
    assert str(torch.ops.npu.npu_moe_distribute_dispatch.default._schema).endswith(
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


def test_wrong_keyword_fails_on_the_schema_not_on_the_emulation(real, rng):
    q, k, v = _qkv(rng)
    kwargs = dict(input_layout="TND", num_heads=2, actual_seq_lengths=[6], actual_seq_lengths_kv=[10])
    emulation.npu_fused_infer_attention_score(q, k, v, not_an_argument=None, **kwargs)   # lenient
    with pytest.raises(RuntimeError, match="Unknown keyword argument .not_an_argument"):
        real.npu_fused_infer_attention_score(q, k, v, not_an_argument=None, **kwargs)
    real.npu_fused_infer_attention_score(q, k, v, **kwargs)                               # control


def test_positional_misuse_fails(real, rng):
    q, k, v = _qkv(rng)
    with pytest.raises(RuntimeError, match="positional"):   # everything after value is keyword-only
        real.npu_fused_infer_attention_score(q, k, v, None, None, [6], [10])
    with pytest.raises((TypeError, RuntimeError)):   # head_num, input_layout are positional and required
        real.npu_fusion_attention(q, k, v, input_layout="TND")


def _renamed(real, rename: dict, drop: tuple = ()):
    """A torch_npu whose npu_fusion_attention receives a misspelt / incomplete adapter call."""
    def call(*args, **kwargs):
        kwargs = {rename.get(key, key): value for key, value in kwargs.items() if key not in drop}
        return real.npu_fusion_attention(*args, **kwargs)

    return types.SimpleNamespace(npu_fusion_attention=call)


def test_adapter_typo_is_caught(real, rng):
    """The adapter spells the op's keyword 'pre_tockens'; the natural 'pre_tokens' must fail."""
    q, k, v = _qkv(rng)
    args = (q, k, v, cu([6]), cu([10]), 6, 10)
    opts = dict(softmax_scale=0.25, window=(3, 0), mask=None, softcap=0.0, out=torch.empty_like(q), return_lse=True)
    with emulation.installed(_renamed(real, {"pre_tockens": "pre_tokens"})):
        with pytest.raises(RuntimeError, match="Unknown keyword argument .pre_tokens"):
            npu_attention.flash_attn_varlen(*args, **opts)
    with emulation.installed(real):
        npu_attention.flash_attn_varlen(*args, **opts)                                     # control


def test_softmax_layout_matters(real, rng):
    """Without softmax_layout='TND' the op returns softmax_max/sum in NTD order (docs): the
    adapter's lse is then wrong, so dropping the argument must break the parity."""
    q, k, v = (randn((12, 3, 16), torch.float32, rng) for _ in range(3))
    opts = dict(softmax_scale=0.25, window=(-1, 0), mask=None, softcap=0.0, return_lse=True)
    with ops.use_impl(attention="reference"):
        _, ref_lse = ops.flash_attn_varlen(q, k, v, cu([5, 7]), cu([5, 7]), 7, 7, causal=True, return_lse=True,
                                           softmax_scale=0.25)
    with emulation.installed(real):
        good = npu_attention.flash_attn_varlen(q, k, v, cu([5, 7]), cu([5, 7]), 7, 7, out=torch.empty_like(q), **opts)
    with emulation.installed(_renamed(real, {}, drop=("softmax_layout",))):
        bad = npu_attention.flash_attn_varlen(q, k, v, cu([5, 7]), cu([5, 7]), 7, 7, out=torch.empty_like(q), **opts)
    torch.testing.assert_close(good, ref_lse, atol=1e-4, rtol=1e-5)
    assert (bad - ref_lse).abs().max() > 1e-2


def test_meta_shape_mismatch_is_caught(real, rng, monkeypatch):
    """An emulation whose lse had the wrong layout ([N, T, 1]) disagrees with the wheel's meta function."""
    q, k, v = _qkv(rng)
    original = emulation.npu_fused_infer_attention_score

    def transposed_lse(*args, **kwargs):
        out, lse = original(*args, **kwargs)
        return out, lse.transpose(0, 1).contiguous()

    monkeypatch.setattr(emulation, "npu_fused_infer_attention_score", transposed_lse)
    with pytest.raises(AssertionError, match="real meta function"):
        real.npu_fused_infer_attention_score(q, k, v, input_layout="TND", num_heads=2, actual_seq_lengths=[6],
                                             actual_seq_lengths_kv=[10], softmax_lse_flag=True)
