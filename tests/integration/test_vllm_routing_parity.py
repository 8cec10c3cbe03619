"""moe_route against vLLM 0.32's own routing functions (imported, run on CPU):

* ``score_dtype=torch.bfloat16`` picks the experts of vLLM's GPU grouped top-k
  (``grouped_topk``: scores in the bf16 logits' dtype) on every token whose choice is not a
  tie (vLLM's ``torch.topk`` leaves ties open; ours go to the lower index);
* the default (float32 scores) picks the experts of vLLM's CPU router, which upcasts;
* with a correction bias the two differ on unambiguous tokens (bf16 rounding of the scores
  moves them relative to the float32 bias; without a bias rounding only creates ties, as
  softmax is monotonic): the option matters.

Shapes follow the models vLLM routes this way: DeepSeek-V3 (256 experts, 8 groups, 4 kept,
top 8, sigmoid + float32 correction bias, scaling 2.5) and DeepSeek-V2 (softmax, no bias)."""

import pytest
import torch

from ascend_ext import ops

from .vllm_runner import needs_vllm

pytestmark = needs_vllm

CASES = {
    "deepseek_v3": dict(experts=256, groups=8, topk_group=4, k=8, scoring="sigmoid", bias=True, scale=2.5,
                        renormalize=True),
    "deepseek_v2": dict(experts=64, groups=8, topk_group=3, k=6, scoring="softmax", bias=False, scale=1.0,
                        renormalize=False),
}


def _vllm_gpu_grouped_topk():
    from vllm.model_executor.layers.fused_moe.router import grouped_topk_router

    fn = grouped_topk_router.grouped_topk
    return getattr(fn, "_torchdynamo_orig_callable", fn)   # the torch function, eagerly (no compile)


def _ambiguous(logits, bias, c):
    """Rows where vLLM's own choice is a tie (written here from vLLM's arithmetic, bf16
    scores): equal group scores at the kept-group boundary or equal scores at the k-th place."""
    scores = torch.softmax(logits, -1) if c["scoring"] == "softmax" else logits.sigmoid()
    sel = scores + bias if bias is not None else scores
    grouped = sel.view(sel.shape[0], c["groups"], -1)
    gs = grouped.topk(2, -1).values.sum(-1) if bias is not None else grouped.amax(-1)
    gs_sorted = gs.sort(-1, descending=True).values
    tie_groups = gs_sorted[:, c["topk_group"] - 1] == gs_sorted[:, c["topk_group"]]
    keep = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, gs.topk(c["topk_group"], -1).indices, True)
    allowed = grouped.masked_fill(~keep[..., None], float("-inf")).view(sel.shape)
    s = allowed.sort(-1, descending=True).values
    return tie_groups | (s[:, c["k"] - 1] == s[:, c["k"]])


@pytest.mark.parametrize("case", sorted(CASES))
def test_bf16_score_dtype_picks_vllm_gpu_experts(case, rng):
    c = CASES[case]
    tokens = 8192
    logits = (torch.randn(tokens, c["experts"], generator=rng) * 2).to(torch.bfloat16)
    bias = torch.randn(c["experts"], generator=rng) * 0.05 if c["bias"] else None
    v_w, v_ids = _vllm_gpu_grouped_topk()(logits, logits, c["k"], c["renormalize"], c["groups"], c["topk_group"],
                                          c["scoring"], c["scale"], bias)
    kwargs = dict(scoring=c["scoring"], renormalize=c["renormalize"], num_expert_group=c["groups"],
                  topk_group=c["topk_group"], correction_bias=bias, routed_scaling_factor=c["scale"])
    w, ids = ops.moe_route(logits, c["k"], score_dtype=torch.bfloat16, **kwargs)
    w32, ids32 = ops.moe_route(logits, c["k"], **kwargs)

    clear = ~_ambiguous(logits, bias, c)
    assert clear.float().mean() > 0.9, "too many ties for the comparison to mean much"
    ours, theirs = ids.sort(-1), v_ids.long().sort(-1)
    assert torch.equal(ours.values[clear].long(), theirs.values[clear])
    # weights: vLLM's bf16 arithmetic, returned as float32 (compare in the same expert order)
    mine = w.gather(1, ours.indices)[clear]
    vllm = v_w.float().gather(1, theirs.indices)[clear]
    torch.testing.assert_close(mine, vllm, atol=0, rtol=0)
    differs = (ids32.sort(-1).values.long() != theirs.values).any(-1) & clear
    print(f"{case}: float32 scores pick other experts than vLLM's bf16 grouped top-k on "
          f"{int(differs.sum())} of {int(clear.sum())} unambiguous tokens")
    if c["bias"]:
        assert int(differs.sum()) > 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_float32_default_picks_vllm_cpu_experts(case, rng):
    """vLLM's CPU router upcasts the logits: our default equals it (ties aside: float32 has few)."""
    from vllm.model_executor.layers.fused_moe.router.cpu_router import _grouped_topk

    c = CASES[case]
    logits = (torch.randn(2048, c["experts"], generator=rng) * 2).to(torch.bfloat16)
    bias = torch.randn(c["experts"], generator=rng) * 0.05 if c["bias"] else None
    v_w, v_ids = _grouped_topk(logits, c["k"], c["renormalize"], c["groups"], c["topk_group"], c["scoring"],
                               c["scale"], bias)
    w, ids = ops.moe_route(logits, c["k"], scoring=c["scoring"], renormalize=c["renormalize"],
                           num_expert_group=c["groups"], topk_group=c["topk_group"], correction_bias=bias,
                           routed_scaling_factor=c["scale"])
    clear = ~_ambiguous(logits.float(), bias, c)   # bf16 logits give equal float32 scores too
    assert clear.float().mean() > 0.9
    ours, theirs = ids.sort(-1), v_ids.long().sort(-1)
    assert torch.equal(ours.values[clear].long(), theirs.values[clear])
    torch.testing.assert_close(w.gather(1, ours.indices)[clear], v_w.float().gather(1, theirs.indices)[clear],
                               atol=1e-6, rtol=1e-5)


@pytest.fixture
def group_of_one(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_score_dtype_through_ep_moe_and_bad_input(group_of_one, rng):
    """ep_moe forwards score_dtype (a group of one); bad dtypes are refused."""
    x = torch.randn(16, 32, generator=rng).to(torch.bfloat16)
    logits = torch.randn(16, 16, generator=rng).to(torch.bfloat16)
    w13 = torch.randn(16, 2 * 24, 32, generator=rng).to(torch.bfloat16) * 0.1
    w2 = torch.randn(16, 32, 24, generator=rng).to(torch.bfloat16) * 0.1
    outs = [ops.ep_moe(x, logits, w13, w2, 4, num_expert_group=4, topk_group=2, score_dtype=dtype)
            for dtype in (None, torch.bfloat16)]
    assert all(torch.isfinite(o.float()).all() for o in outs)
    compiled = torch.compile(lambda a, b: ops.ep_moe(a, b, w13, w2, 4, num_expert_group=4, topk_group=2,
                                                     score_dtype=torch.bfloat16), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, logits), outs[1])
    with pytest.raises(TypeError, match="score_dtype must be None or one of"):
        ops.moe_route(logits, 2, score_dtype=torch.int8)
    from ascend_ext.integration.moe import vllm_score_dtype

    assert vllm_score_dtype(True, logits) is None                  # CPU: vLLM's CPU router upcasts
    assert vllm_score_dtype(True, logits.to("meta")) == torch.bfloat16   # GPU-like device: logits' dtype
    assert vllm_score_dtype(False, logits.to("meta")) is None
