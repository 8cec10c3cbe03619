"""Cooperative attention (context split between accelerator and host) equals full attention.

On a CPU-only machine the "accelerator" side is the CPU too, which still exercises the
split and the lse merge; with a GPU the device side runs there.
"""

import pytest
import torch

from ascend_ext import ops

from .impls import DEVICE, runnable
from .naive import allowed, assert_close, assert_lse_close, attention_f64, cu, paged_cache, randn

BLOCK = 16


def _full_case(lengths, q_lens, hq, hkv, d, dtype, rng):
    keys = [randn((n, hkv, d), dtype, rng) for n in lengths]
    values = [randn((n, hkv, d), dtype, rng) for n in lengths]
    k_cache, v_cache, table, lens = paged_cache(keys, values, BLOCK, rng, device=DEVICE)
    q = randn((sum(q_lens), hq, d), dtype, rng, DEVICE)
    return keys, values, k_cache, v_cache, table, lens, q


def _reference(q, keys, values, q_lens, causal, d):
    outs, lses, q0 = [], [], 0
    for kk, vv, lq in zip(keys, values, q_lens):
        o, l = attention_f64(q[q0:q0 + lq].cpu(), kk, vv, d ** -0.5, allowed(lq, kk.shape[0], causal, (-1, -1)))
        outs.append(o)
        lses.append(l)
        q0 += lq
    return torch.cat(outs), torch.cat(lses, dim=1)


SPLITS = {
    "nothing_offloaded": lambda n, lq: 0,
    "all_but_new_offloaded": lambda n, lq: (n - lq) // BLOCK * BLOCK,
    "uneven": lambda n, lq: ((n - lq) // BLOCK // 2) * BLOCK,
}


# on CPU both sides run the CPU implementations (forced one by one); with a GPU the
# device side uses its default and the host side the CPU default
IMPLS = runnable("paged_attention") if DEVICE == "cpu" else ["default"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cooperative_equals_full_attention(impl, split, causal, dtype, rng):
    lengths, q_lens = [70, 33, 5, 129], [1, 4, 5, 1]
    hq, hkv, d = 8, 2, 64
    keys, values, k_cache, v_cache, table, lens, q = _full_case(lengths, q_lens, hq, hkv, d, dtype, rng)
    host_tokens = [SPLITS[split](n, lq) for n, lq in zip(lengths, q_lens)]
    device_kv, host_kv = ops.offload_prefix(k_cache, v_cache, table, lens, host_tokens)
    assert host_kv.k_cache.device.type == "cpu"
    assert host_kv.seq_lens.tolist() == host_tokens
    out = torch.full((sum(q_lens), hq, d), float("nan"), dtype=dtype, device=DEVICE)
    overrides = {} if impl == "default" else {"paged_attention": impl}
    with ops.use_impl(**overrides):
        got, lse = ops.cooperative_attention(q, device_kv, host_kv, cu(q_lens, DEVICE), max(q_lens), causal=causal,
                                             return_lse=True, out=out)
    assert got.data_ptr() == out.data_ptr()
    ref, ref_lse = _reference(q, keys, values, q_lens, causal, d)
    assert_close(got, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


def test_cooperative_with_empty_host_cache_and_zero_queries(rng):
    lengths, q_lens = [20, 9], [0, 3]
    keys, values, k_cache, v_cache, table, lens, q = _full_case(lengths, q_lens, 4, 4, 32, torch.float32, rng)
    device_kv, host_kv = ops.offload_prefix(k_cache, v_cache, table, lens, [0, 0])
    assert host_kv.k_cache.shape[0] == 0
    got = ops.cooperative_attention(q, device_kv, host_kv, cu(q_lens, DEVICE), 3)
    ref, _ = _reference(q, keys, values, q_lens, True, 32)
    assert_close(got, ref, torch.float32)


def test_cooperative_rejects_bad_input(rng):
    lengths, q_lens = [40, 18], [1, 3]
    _, _, k_cache, v_cache, table, lens, q = _full_case(lengths, q_lens, 4, 2, 32, torch.float32, rng)
    device_kv, host_kv = ops.offload_prefix(k_cache, v_cache, table, lens, [32, 16])
    cu_q = cu(q_lens, DEVICE)
    with pytest.raises(TypeError, match="device_kv must be a PagedKV"):
        ops.cooperative_attention(q, tuple(device_kv), host_kv, cu_q, 3)
    with pytest.raises(ValueError, match="host_kv.k_cache"):
        ops.cooperative_attention(q, device_kv, host_kv._replace(k_cache=host_kv.k_cache[..., :16]), cu_q, 3)
    with pytest.raises(TypeError, match="host_kv.seq_lens"):
        ops.cooperative_attention(q, device_kv, host_kv._replace(seq_lens=host_kv.seq_lens.long()), cu_q, 3)
    # sequence 1 keeps only 2 keys on the accelerator but has 3 new queries
    with pytest.raises(ValueError, match="must stay in device_kv"):
        ops.cooperative_attention(q, device_kv, host_kv, cu_q, 3)
    with pytest.raises(ValueError, match="host_tokens\\[0\\] = 5 must be a multiple"):
        ops.offload_prefix(k_cache, v_cache, table, lens, [5, 0])


def test_plan_kv_placement_fits_budget_and_shares_it():
    block, per_token = 16, 100
    lens, q_lens = [1000, 300, 17], [1, 1, 17]
    # minimal device need: one block each (the new token's), the 17-token prompt needs 2
    host = ops.plan_kv_placement(lens, q_lens, block, per_token, device_budget_bytes=4 * block * per_token)
    assert host == [(999 // 16) * 16, (299 // 16) * 16, 0]
    assert all(h % block == 0 for h in host)
    # a bigger budget moves the newest host blocks back, round-robin
    host2 = ops.plan_kv_placement(lens, q_lens, block, per_token, device_budget_bytes=10 * block * per_token)
    device_blocks = sum(-(-(n - h) // block) for n, h in zip(lens, host2))
    assert device_blocks == 10
    assert host[0] - host2[0] == host[1] - host2[1] == 3 * block
    # everything fits: nothing offloaded
    assert ops.plan_kv_placement(lens, q_lens, block, per_token, 10 ** 9) == [0, 0, 0]
    with pytest.raises(ValueError, match="newest blocks alone need 4 blocks"):
        ops.plan_kv_placement(lens, q_lens, block, per_token, device_budget_bytes=3 * block * per_token)
    with pytest.raises(ValueError, match="q_lens must be in"):
        ops.plan_kv_placement([5], [6], block, per_token, 10 ** 6)
