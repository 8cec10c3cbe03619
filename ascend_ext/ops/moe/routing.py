"""MoE routing: scores, (group-limited) top-k selection, weights.

Deterministic tie-breaking: among equal selection scores the lower expert index
(and, for groups, the lower group index) wins. Selection uses a stable descending
sort rather than ``torch.topk``, whose order for ties is unspecified.
"""

from __future__ import annotations

import torch

from .. import _validate as check


def _stable_topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def route_reference(router_logits, top_k, *, scoring, renormalize, num_expert_group, topk_group,
                    correction_bias, routed_scaling_factor):
    logits = router_logits.float()
    scores = torch.softmax(logits, dim=-1) if scoring == "softmax" else torch.sigmoid(logits)
    select = scores if correction_bias is None else scores + correction_bias.float()
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
    return weights * routed_scaling_factor, ids.to(torch.int32)


def moe_route(router_logits, top_k, *, scoring="softmax", renormalize=True, num_expert_group=None,
              topk_group=None, correction_bias=None, routed_scaling_factor=1.0):
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
        routed_scaling_factor: multiplies the final weights.

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
    if compiling():
        return torch.ops.ascend_ext.moe_route(
            router_logits, top_k, scoring, renormalize, -1 if num_expert_group is None else num_expert_group,
            -1 if topk_group is None else topk_group, correction_bias, float(routed_scaling_factor))
    return bound("moe_route", router_logits.device.type).fn(
        router_logits, top_k, scoring=scoring, renormalize=renormalize, num_expert_group=num_expert_group,
        topk_group=topk_group, correction_bias=correction_bias, routed_scaling_factor=float(routed_scaling_factor))
