"""Fused EP path on one GPU: parity with the reference implementation, and the
fixed-capacity dispatch + experts + combine captured in a CUDA graph and replayed with
new routing (equal to eager)."""

import pytest
import torch

from ascend_ext import ops

pytestmark = pytest.mark.gpu


def _inputs(tokens, hidden, experts, k, gen, dtype=torch.bfloat16):
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    weights, ids = ops.moe_route(torch.randn(tokens, experts, generator=gen), k)
    ids[::5, 1] = -1                                  # masked slots
    return x.cuda(), ids.cuda(), weights.cuda()


def _layer(x, ids, weights, experts, w13, w2, quant, capacity):
    res = ops.ep_dispatch(x, ids, weights, experts, quant=quant, max_tokens_per_rank=capacity)
    y = ops.moe_experts(res.recv_x, w13, w2, res.expert_offsets, res.tokens_per_expert, scales=res.recv_scales,
                        out_dtype=x.dtype)
    return ops.ep_combine(y, res.handle), res.num_dropped


@pytest.mark.parametrize("tokens,hidden,experts", [(1000, 2048, 64), (77, 7168, 256)])
@pytest.mark.parametrize("quant", [None, "int8"])
@pytest.mark.parametrize("capacity", [None, 50])
def test_fused_matches_reference_identity_experts(tokens, hidden, experts, quant, capacity):
    gen = torch.Generator().manual_seed(tokens + hidden)
    x, ids, weights = _inputs(tokens, hidden, experts, 8, gen)
    outs = {}
    for impl in ("triton", "reference"):
        if impl == "reference":
            import torch.distributed as dist
            if not dist.is_initialized():
                import tempfile   # a file rendezvous: no port to collide on under pytest-xdist
                store = tempfile.mkstemp(prefix="ascend_ext_pg_")[1]
                dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        with ops.use_impl(ep_dispatch=impl, ep_combine=impl):
            res = ops.ep_dispatch(x, ids, weights, experts, quant=quant, max_tokens_per_rank=capacity)
            outs[impl] = (ops.ep_combine(res.dequantized(), res.handle).float(), res.tokens_per_expert.cpu(),
                          int(res.num_dropped))
    got, want = outs["triton"], outs["reference"]
    assert torch.equal(got[1], want[1]) and got[2] == want[2]
    # INT8: the kernels round ties away from zero, the reference to even, so a code may
    # differ by one step (max|x_row| / 127 ~ 0.03 for these bf16 rows) where want is 0
    atol = 3e-2 if quant is None else 2 * float(x.float().abs().amax()) / 127
    torch.testing.assert_close(got[0], want[0], atol=atol, rtol=2e-2)


@pytest.mark.parametrize("quant", [None, "int8"])
def test_fixed_capacity_layer_replays_in_a_cuda_graph(quant):
    tokens, hidden, inter, experts, k = 256, 1024, 512, 32, 8
    gen = torch.Generator().manual_seed(3)
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=gen) * hidden ** -0.5).to(torch.bfloat16).cuda()
    w2 = (torch.randn(experts, hidden, inter, generator=gen) * inter ** -0.5).to(torch.bfloat16).cuda()
    static = [t.clone() for t in _inputs(tokens, hidden, experts, k, gen)]
    with ops.trusted_inputs(), ops.use_impl(ep_dispatch="triton", ep_combine="triton", moe_experts="triton"):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):                          # compile and warm up outside the capture
                _layer(*static, experts, w13, w2, quant, tokens)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            graph_out, graph_dropped = _layer(*static, experts, w13, w2, quant, tokens)
        for step in range(3):                           # new routing and tokens each replay
            fresh = _inputs(tokens, hidden, experts, k, gen)
            for dst, src in zip(static, fresh):
                dst.copy_(src)
            graph.replay()
            eager, eager_dropped = _layer(*fresh, experts, w13, w2, quant, tokens)
            torch.cuda.synchronize()
            assert torch.equal(graph_out, eager), f"replay {step} differs from eager"
            assert int(graph_dropped) == int(eager_dropped) == 0
    # and eager is right: float64 reference of the layer for the last routing
    x, ids, weights = (t.cpu() for t in fresh)
    want = torch.zeros(tokens, hidden, dtype=torch.float64)
    xin = x.double()
    if quant == "int8":
        from ascend_ext.ops.moe.quant import dequantize, quantize_per_token
        xin = dequantize(*quantize_per_token(x), torch.float64)
    for e in range(experts):
        rows, slots = (ids == e).nonzero(as_tuple=True)
        if len(rows):
            gu = xin[rows] @ w13[e].cpu().double().T
            h = torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]
            want.index_add_(0, rows, weights[rows, slots].double()[:, None] * (h @ w2[e].cpu().double().T))
    err = (graph_out.cpu().double() - want).norm() / want.norm()
    assert err < 2e-2, float(err)
