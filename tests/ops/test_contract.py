"""One contract per op: implementation signatures, torch.library custom ops (opcheck,
torch.compile fullgraph), bind-once dispatch, declared support, layering."""

import ast
import pathlib

import pytest
import torch

import ascend_ext
from ascend_ext import ops
from ascend_ext.ops import _contract, _dispatch

from .impls import DEVICE
from .naive import cu, paged_cache, randn

PACKAGE = pathlib.Path(ascend_ext.__file__).parent


# ---------------------------------------------------------------------------- signatures
def _registered():
    for op, impls in sorted(_dispatch._REGISTRY.items()):
        for impl in impls:
            for device in sorted(impl.devices):
                yield pytest.param(op, impl, id=f"{op}-{impl.name}-{device}")
                break


@pytest.mark.parametrize("op,impl", list(_registered()))
def test_every_implementation_has_the_contract_signature(op, impl):
    try:
        fn = impl.load()
    except ImportError as exc:   # e.g. triton missing: nothing to check here
        pytest.skip(f"{impl.name} of {op} does not import here: {exc}")
    assert _contract.signature_mismatch(op, fn) is None, _contract.signature_mismatch(op, fn)


def test_signature_check_catches_a_wrong_implementation():
    def wrong(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, *, softmax_scale, window,
              softcap, out, lse, max_seqlen_k):   # 'lse' instead of 'return_lse'
        pass

    assert "return_lse" in _contract.signature_mismatch("paged_attention", wrong)


def test_every_public_op_is_a_custom_op():
    for op in _contract.SCHEMAS:
        assert hasattr(torch.ops.ascend_ext, op), op
        assert torch.ops.ascend_ext.__getattr__(op).default._schema.name == f"ascend_ext::{op}"


# ---------------------------------------------------------------------------- opcheck
def _attention_inputs(rng, dtype=torch.float32):
    lens = [5, 1, 9]
    hq, hkv, d = 4, 2, 32
    q = randn((sum(lens), hq, d), dtype, rng)
    k = randn((sum(lens), hkv, d), dtype, rng)
    v = randn((sum(lens), hkv, d), dtype, rng)
    return q, k, v, cu(lens, "cpu"), max(lens)


def _opcheck(op, args, kwargs=None, schema=True):
    tests = ("test_schema",) if schema else ()
    torch.library.opcheck(getattr(torch.ops.ascend_ext, op).default, args, kwargs or {},
                          test_utils=tests + ("test_faketensor", "test_aot_dispatch_dynamic"))


def test_opcheck_attention(rng):
    q, k, v, cuq, mx = _attention_inputs(rng)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[1], q.shape[0])
    _opcheck("flash_attn_varlen", (q, k, v, cuq, cuq, mx, mx, 0.2, -1, 0, 0.0, out, lse))
    tm = ops.TileMask.causal(6, 6, tile=(16, 16))
    q6, k6, v6 = q[:12], k[:12], v[:12]
    cu6 = cu([6, 6], "cpu")
    from ascend_ext.ops._library import mask_to_args
    with ops.use_impl(flash_attn_varlen="reference"):
        _opcheck("flash_attn_varlen", (q6, k6, v6, cu6, cu6, 6, 6, 0.2, -1, -1, 0.0, out[:12], None),
                 mask_to_args(tm))
    keys = [randn((n, 2, 32), torch.float32, rng) for n in (7, 20)]
    values = [randn((n, 2, 32), torch.float32, rng) for n in (7, 20)]
    k_cache, v_cache, table, seq_lens = paged_cache(keys, values, 8, rng)
    qd = randn((2, 4, 32), torch.float32, rng)
    _opcheck("paged_attention", (qd, k_cache, v_cache, table, seq_lens, cu([1, 1], "cpu"), 1, -1, 0.2, -1, 0,
                                 0.0, torch.empty_like(qd), torch.empty(4, 2)))
    sinks = {"sinks": torch.randn(4, generator=rng)}   # attention sinks (every CPU impl takes them)
    _opcheck("flash_attn_varlen", (q, k, v, cuq, cuq, mx, mx, 0.2, -1, 0, 0.0, out, lse), sinks)
    _opcheck("paged_attention", (qd, k_cache, v_cache, table, seq_lens, cu([1, 1], "cpu"), 1, -1, 0.2, -1, 0,
                                 0.0, torch.empty_like(qd), torch.empty(4, 2)), sinks)
    qg = randn((9, 4, 32), torch.float32, rng)   # more queries than keys (7 and 2), non-causal
    _opcheck("paged_attention", (qg, k_cache, v_cache, table, seq_lens, cu([7, 2], "cpu"), 7, -1, 0.2, -1, -1,
                                 0.0, torch.empty_like(qg), torch.empty(4, 9)), sinks)
    new_k, new_v = randn((3, 2, 32), torch.float32, rng), randn((3, 2, 32), torch.float32, rng)
    _opcheck("reshape_and_cache", (new_k, new_v, k_cache.clone(), v_cache.clone(),
                                   torch.tensor([0, 9, -1], dtype=torch.int64)))
    for cache_dtype, offsets in ((torch.float8_e4m3fn, None), (torch.int8, torch.randn(2, 32, generator=rng))):
        kq, vq = k_cache.nan_to_num().to(cache_dtype), v_cache.nan_to_num().to(cache_dtype)
        scales = dict(k_scale=torch.rand(2, generator=rng) + 0.1, v_scale=torch.rand(1, generator=rng) + 0.1,
                      k_offset=offsets, v_offset=offsets)
        # torch's schema check compares tensors with ops float8 lacks on CPU ("mul_cpu_reduced_float"):
        # int8 covers the mutation annotations, fp8 the fake / AOT paths
        schema = cache_dtype == torch.int8
        with ops.use_impl(paged_attention="reference"):
            _opcheck("paged_attention", (qd, kq, vq, table, seq_lens, cu([1, 1], "cpu"), 1, -1, 0.2, -1, 0, 0.0,
                                         torch.empty_like(qd), torch.empty(4, 2)), scales, schema)
        _opcheck("reshape_and_cache", (new_k, new_v, kq.clone(), vq.clone(),
                                       torch.tensor([0, 9, -1], dtype=torch.int64)), scales, schema)
    o_a, o_b = randn((3, 4, 8), torch.float32, rng), randn((3, 4, 8), torch.float32, rng)
    _opcheck("merge_attn_states", (o_a, torch.randn(4, 3, generator=rng), o_b, torch.randn(4, 3, generator=rng)))


def test_opcheck_mla_moe_comm(rng):
    cache = randn((4, 8, 40), torch.float32, rng)
    table = torch.tensor([[2, 0], [1, 3]], dtype=torch.int32)
    lens = torch.tensor([9, 3], dtype=torch.int32)
    q = randn((2, 2, 4, 40), torch.float32, rng)
    _opcheck("mla_decode", (q, cache, table, lens, 32, 0.3, True, torch.empty(2, 2, 4, 32), torch.empty(4, 4)))
    # FP8 latent cache with its per-tensor scale (no schema check: torch's mutation check
    # compares inputs with allclose, which has no CPU float8 kernel)
    fp8 = cache.clamp(-400, 400).to(torch.float8_e4m3fn)
    torch.library.opcheck(torch.ops.ascend_ext.mla_decode.default,
                          (q.to(torch.bfloat16), fp8, table, lens, 32, 0.3, True,
                           torch.empty(2, 2, 4, 32, dtype=torch.bfloat16), torch.empty(4, 4), 0.05),
                          test_utils=("test_faketensor", "test_aot_dispatch_dynamic"))
    _opcheck("concat_and_cache_mla", (randn((3, 32), torch.float32, rng), randn((3, 8), torch.float32, rng),
                                      cache.clone(), torch.tensor([1, 30, -1])))
    logits = randn((5, 8), torch.float32, rng)
    _opcheck("moe_route", (logits, 2, "softmax", True, -1, -1, None, 1.0))
    _opcheck("moe_route", (logits, 2, "sigmoid", True, 4, 2, torch.zeros(8), 2.5))
    x = randn((6, 16), torch.float32, rng)
    w13, w2 = randn((2, 24, 16), torch.float32, rng), randn((2, 16, 12), torch.float32, rng)
    _opcheck("moe_experts", (x, w13, w2, torch.tensor([0, 2, 6]), torch.tensor([2, 3]), None, torch.float32))
    _opcheck("tiled_linear_allreduce", (randn((7, 16), torch.float32, rng), randn((5, 16), torch.float32, rng),
                                        None, "", 4, 0, 30.0))


# ---------------------------------------------------------------------------- torch.compile
class _AllAttentionOps(torch.nn.Module):
    def forward(self, q, k, v, cuq, k_cache, v_cache, table, seq_lens, slots, qd, cud, mla_q, mla_cache,
                mla_table, mla_lens, kv_c, k_pe):
        ops.reshape_and_cache(k[:2], v[:2], k_cache, v_cache, slots)
        out, lse = ops.flash_attn_varlen(q, k, v, cuq, cuq, 9, 9, causal=True, return_lse=True)
        dec, dec_lse = ops.paged_attention(qd, k_cache, v_cache, table, seq_lens, cud, 1, return_lse=True)
        sinks = torch.linspace(-1.0, 2.0, q.shape[1])
        sunk, sunk_lse = ops.paged_attention(qd, k_cache, v_cache, table, seq_lens, cud, 1, return_lse=True,
                                             sinks=sinks)
        out = out + ops.flash_attn_varlen(q, k, v, cuq, cuq, 9, 9, causal=True, sinks=sinks)
        merged, merged_lse = ops.merge_attn_states(dec, dec_lse, sunk * 0.5, sunk_lse - 1.0)
        ops.concat_and_cache_mla(kv_c, k_pe, mla_cache, slots)
        mla, mla_lse = ops.mla_decode(mla_q, mla_cache, mla_table, mla_lens, kv_lora_rank=32, softmax_scale=0.3,
                                      return_lse=True)
        return out, lse, merged, merged_lse, mla, mla_lse


def test_compile_fullgraph_matches_eager(rng):
    q, k, v, cuq, mx = _attention_inputs(rng)
    keys = [randn((n, 2, 32), torch.float32, rng) for n in (7, 20)]
    values = [randn((n, 2, 32), torch.float32, rng) for n in (7, 20)]
    k_cache, v_cache, table, seq_lens = paged_cache(keys, values, 8, rng)
    slots = torch.tensor([25, 3], dtype=torch.int64)
    qd = randn((2, 4, 32), torch.float32, rng)
    mla_cache = randn((4, 8, 40), torch.float32, rng)
    args = (q, k, v, cuq, k_cache, v_cache, table, seq_lens, slots, qd, cu([1, 1], "cpu"),
            randn((2, 1, 4, 40), torch.float32, rng),
            mla_cache, torch.tensor([[2, 0], [1, 3]], dtype=torch.int32), torch.tensor([9, 12], dtype=torch.int32),
            randn((2, 32), torch.float32, rng), randn((2, 8), torch.float32, rng))
    eager_args = [a.clone() for a in args]
    compiled_args = [a.clone() for a in args]
    module = _AllAttentionOps()
    expected = module(*eager_args)
    torch._dynamo.reset()
    got = torch.compile(module, fullgraph=True, backend="aot_eager")(*compiled_args)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    for e, g in zip(eager_args, compiled_args):   # the cache writes happened in the compiled graph too
        torch.testing.assert_close(g, e, equal_nan=True)


def test_compiled_graph_holds_the_custom_ops(rng):
    q, k, v, cuq, mx = _attention_inputs(rng)
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    def f(q, k, v, cuq):
        return ops.flash_attn_varlen(q, k, v, cuq, cuq, 9, 9, causal=True)

    torch._dynamo.reset()
    torch.compile(f, fullgraph=True, backend=backend)(q, k, v, cuq)
    assert any("ascend_ext.flash_attn_varlen" in s for s in seen), seen


# ---------------------------------------------------------------------------- bind once
def test_ops_bind_once_per_device(rng):
    keys = [randn((n, 2, 32), torch.float32, rng) for n in (7, 20)]
    k_cache, v_cache, table, seq_lens = paged_cache(keys, keys, 8, rng)
    qd = randn((2, 4, 32), torch.float32, rng)
    cuq = cu([1, 1], "cpu")
    ops.paged_attention(qd, k_cache, v_cache, table, seq_lens, cuq, 1)
    before = _dispatch.SELECT_CALLS
    for _ in range(5):
        ops.paged_attention(qd, k_cache, v_cache, table, seq_lens, cuq, 1)
    assert _dispatch.SELECT_CALLS == before
    with ops.use_impl(attention="reference"):   # an override rebinds, once
        for _ in range(3):
            ops.paged_attention(qd, k_cache, v_cache, table, seq_lens, cuq, 1)
        assert _dispatch.SELECT_CALLS == before + 1
        assert ops.selected_impl("paged_attention", "cpu") == "reference"


# ---------------------------------------------------------------------------- declared support
def test_unsupported_request_raises_the_same_clear_error(rng):
    if "native" not in _dispatch.implementations("flash_attn_varlen", "cpu") or \
            _dispatch.implementations("flash_attn_varlen", "cpu")["native"].unavailable_reason("cpu"):
        pytest.skip("native CPU kernels are not built")
    q, k, v, cuq, mx = _attention_inputs(rng)
    tm = ops.TileMask.causal(6, 6, tile=(16, 16))
    cu6 = cu([6, 6], "cpu")
    with ops.use_impl(attention="native"), pytest.raises(NotImplementedError, match=r"'native' .*TileMask.*reference"):
        ops.flash_attn_varlen(q[:12], k[:12], v[:12], cu6, cu6, 6, 6, mask=tm)


# ---------------------------------------------------------------------------- layering
def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def test_op_layer_never_imports_backends_integration_or_vllm():
    bad = ("ascend_ext.backends", "ascend_ext.integration", "ascend_ext.npu", "vllm", "ascend_ext.demo", "tests")
    for path in sorted((PACKAGE / "ops").rglob("*.py")):
        hits = [m for m in _imports(path) if any(m == b or m.startswith(b + ".") for b in bad)]
        assert not hits, f"{path.relative_to(PACKAGE)} imports {hits}"


def test_product_never_imports_the_tests():
    for path in sorted(PACKAGE.rglob("*.py")):
        hits = [m for m in _imports(path) if m == "tests" or m.startswith("tests.")]
        assert not hits, f"{path.relative_to(PACKAGE)} imports {hits}"


@pytest.fixture
def group_of_one(tmp_path):
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ep_moe_composite_op_matches_the_parts_and_compiles(group_of_one, rng):
    """ep_moe (group of one) = route -> dispatch -> experts -> combine, eager, through the
    custom op, and inside a fullgraph-compiled function."""
    x = randn((7, 16), torch.float32, rng)
    logits = randn((7, 8), torch.float32, rng)
    w13, w2 = randn((8, 24, 16), torch.float32, rng) * 0.2, randn((8, 16, 12), torch.float32, rng) * 0.2
    weights, ids = ops.moe_route(logits, 2)
    res = ops.ep_dispatch(x, ids, weights, 8)
    want = ops.ep_combine(ops.moe_experts(res.recv_x, w13, w2, res.expert_offsets, res.tokens_per_expert,
                                          out_dtype=x.dtype), res.handle)
    for capacity in (None, 7):
        got = ops.ep_moe(x, logits, w13, w2, 2, capacity=capacity, max_graph_capacity=8)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    _opcheck("ep_moe", (x, logits, w13, w2, None, 2, "softmax", True, -1, -1, 1.0, "", 7, 8, 30.0))
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: ops.ep_moe(a, b, w13, w2, 2, capacity=a.shape[0], max_graph_capacity=8),
                             fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, logits), want, atol=1e-5, rtol=1e-5)


def test_npu_implementations_declare_their_limits():
    """The NPU table declares the fused ops' limits, so a request beyond them gets the common
    NotImplementedError (no silent fallback, no error deep inside torch_npu)."""
    paged = _dispatch.implementations("paged_attention", "npu")["npu"]
    with pytest.raises(NotImplementedError, match="softcap"):
        _contract.require(paged, "npu", dtype=torch.bfloat16, softcap=30.0)
    with pytest.raises(NotImplementedError, match="dtype float32"):
        _contract.require(paged, "npu", dtype=torch.float32)
    _contract.require(paged, "npu", dtype=torch.bfloat16, window=(128, 0))   # supported: no error
    mla = _dispatch.implementations("mla_decode", "npu")
    for name in ("npu", "triton"):
        with pytest.raises(NotImplementedError, match="FP8"):
            _contract.require(mla[name], "npu", dtype=torch.bfloat16, fp8_cache=True)
