"""MoE routing: scores, (group-limited) top-k selection, weights.

Deterministic tie-breaking: among equal selection scores the lower expert index
(and, for groups, the lower group index) wins. Selection uses a stable descending
sort rather than ``torch.topk``, whose order for ties is unspecified.

Score dtype. By default scores, group scores and weights are computed in float32 whatever
the logits' dtype (as vLLM's CPU router and sglang do): fewer ties, and rounding cannot
flip a selection. vLLM's GPU grouped top-k (its torch function and its fused CUDA kernel,
used by DeepSeek-V2/V3 on CUDA) computes them in the router logits' dtype instead, so with
bf16 logits it picks other experts for a few tokens in a thousand (rounding makes close
scores equal or swaps them). ``score_dtype=torch.bfloat16`` reproduces that arithmetic
(softmax / sigmoid rounded to bf16, a float32 correction bias promotes the selection scores
to float32 as torch's type promotion does, weights renormalised and scaled in bf16, then
float32); ties still go to the lower index, where vLLM's ``torch.topk`` leaves them open.

``routed_scaling_factor`` multiplies the final weights (after renormalisation), as vLLM's
routers do with the factor they are given: vLLM passes the model's factor to the router, or
1.0 when the model asks for ``apply_routed_scale_to_output`` (its MoE runner then scales
the layer output instead; the vLLM integration passes the layer's own factor, so both give
vLLM's result). sglang multiplies the weights only under its
``apply_routed_scaling_factor_on_output`` flag and otherwise scales the MoE output in the
model; the two orders agree up to rounding.
"""

from __future__ import annotations

import torch

from .. import _validate as check


def _stable_topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def route_reference(router_logits, top_k, *, scoring, renormalize, num_expert_group, topk_group,
                    correction_bias, routed_scaling_factor, score_dtype=None):
    dtype = torch.float32 if score_dtype is None else score_dtype
    logits = router_logits.to(dtype)
    scores = torch.softmax(logits, dim=-1) if scoring == "softmax" else torch.sigmoid(logits)
    if correction_bias is None:
        select = scores
    else:   # float32 arithmetic by default; else torch's promotion of (score_dtype, bias dtype), as vLLM
        select = scores + (correction_bias.float() if score_dtype is None else correction_bias)
    if num_expert_group is not None and num_expert_group > 1:
        tokens, experts = select.shape
        grouped = select.view(tokens, num_expert_group, experts // num_expert_group)
        # DeepSeek-V3 (with a correction bias) ranks groups by the sum of their two best
        # experts; DeepSeek-V2 by their best expert
        group_score = (grouped.topk(2, dim=-1).values.sum(-1) if correction_bias is not None
                       else grouped.amax(dim=-1))
        keep_groups = _stable_topk_indices(group_score, topk_group)
        group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep_groups, True)
        select = grouped.masked_fill(~group_mask[..., None], float("-inf")).view(tokens, experts)
    ids = _stable_topk_indices(select, top_k)
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    return (weights * routed_scaling_factor).float(), ids.to(torch.int32)


def moe_route(router_logits, top_k, *, scoring="softmax", renormalize=True, num_expert_group=None,
              topk_group=None, correction_bias=None, routed_scaling_factor=1.0, score_dtype=None):
    """Pick ``top_k`` experts per token and their weights.

    Args:
        router_logits: [T, E] float logits.
        top_k: experts per token.
        scoring: "softmax" or "sigmoid" (DeepSeek-V3) turns logits into scores.
        renormalize: divide the chosen weights by their sum.
        num_expert_group, topk_group: group-limited routing (DeepSeek-V2/V3): experts
            form ``num_expert_group`` equal groups; only experts of the ``topk_group``
            best groups can be chosen.
        correction_bias: [E] added to the scores for *selection only* (the weights are
            the unbiased scores).
        routed_scaling_factor: multiplies the final weights (see the module docstring for
            how vLLM and sglang apply it).
        score_dtype: None (float32 scores, the default) or torch.float16 / torch.bfloat16:
            compute scores, selection and weights in that dtype, as vLLM's GPU grouped top-k
            does in the logits' dtype (module docstring).

    Returns:
        (topk_weights float32 [T, top_k], topk_ids int32 [T, top_k]), experts in
        descending selection score, ties broken towards the lower index.
    """
    from .._dispatch import bound
    from .._library import compiling

    check.tensor("router_logits", router_logits, ndim=2, dtypes=check.FLOAT_DTYPES)
    experts = router_logits.shape[1]
    check.positive_int("top_k", top_k)
    if top_k > experts:
        raise ValueError(f"top_k ({top_k}) must be <= the number of experts ({experts})")
    if scoring not in ("softmax", "sigmoid"):
        raise ValueError(f"scoring must be 'softmax' or 'sigmoid', got {scoring!r}")
    if (num_expert_group is None) != (topk_group is None):
        raise ValueError("num_expert_group and topk_group must be given together")
    if num_expert_group is not None:
        check.positive_int("num_expert_group", num_expert_group)
        check.positive_int("topk_group", topk_group)
        if experts % num_expert_group:
            raise ValueError(f"num_expert_group ({num_expert_group}) must divide the number of experts ({experts})")
        if topk_group > num_expert_group:
            raise ValueError(f"topk_group ({topk_group}) must be <= num_expert_group ({num_expert_group})")
        per_group = experts // num_expert_group
        if top_k > topk_group * per_group:
            raise ValueError(f"top_k ({top_k}) exceeds the experts in the kept groups "
                             f"(topk_group * experts per group = {topk_group * per_group})")
        if correction_bias is not None and per_group < 2 and num_expert_group > 1:
            raise ValueError("group scores with a correction bias need >= 2 experts per group")
    if correction_bias is not None:
        check.tensor("correction_bias", correction_bias, ndim=1, dtypes=check.FLOAT_DTYPES)
        check.dim_equals("correction_bias", correction_bias, 0, experts, "the number of experts")
        check.same_device("router_logits", router_logits, correction_bias=correction_bias)
    if isinstance(routed_scaling_factor, torch.Tensor) or not isinstance(routed_scaling_factor, (int, float)):
        raise TypeError(f"routed_scaling_factor must be a float, got {type(routed_scaling_factor).__name__}")
    score_dtype = check_score_dtype(score_dtype)
    if compiling():
        return torch.ops.ascend_ext.moe_route(
            router_logits, top_k, scoring, renormalize, -1 if num_expert_group is None else num_expert_group,
            -1 if topk_group is None else topk_group, correction_bias, float(routed_scaling_factor), score_dtype)
    return bound("moe_route", router_logits.device.type).fn(
        router_logits, top_k, scoring=scoring, renormalize=renormalize, num_expert_group=num_expert_group,
        topk_group=topk_group, correction_bias=correction_bias, routed_scaling_factor=float(routed_scaling_factor),
        score_dtype=score_dtype)


def check_score_dtype(score_dtype):
    """None (float32, the default) or a float dtype; float32 normalises to None."""
    if score_dtype is None or score_dtype == torch.float32:
        return None
    if score_dtype not in check.FLOAT_DTYPES:
        raise TypeError(f"score_dtype must be None or one of float16, bfloat16, float32, got {score_dtype!r}")
    return score_dtype
