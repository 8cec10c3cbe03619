"""Expert-parallel MoE for vLLM's unquantized MoE layers (no math: ops calls only).

Registered out-of-tree for vLLM's ``UnquantizedFusedMoEMethod``. When the layer runs
with expert parallelism (or ``ASCEND_EXT_MOE=always`` on a single rank) (``enable_expert_parallel=True``, EP group = the tensor-parallel
group, data parallel 1) and uses features we support, each step runs

    moe_route -> ep_dispatch -> moe_experts -> ep_combine

on this rank's share of the tokens (tokens are replicated across the TP group, so
rank r takes the r-th contiguous slice). The returned output holds this rank's
slice and zeros elsewhere; vLLM's final tensor-parallel all-reduce then sums the
slices into the full result on every rank - no expert is computed twice. Any other
configuration keeps vLLM's own MoE path unchanged.

Decode-sized steps (at most vLLM's largest CUDA-graph capture size, and any step being
captured) dispatch in the graph-safe fixed-capacity mode with capacity = this rank's
token share, which can never overflow: no host synchronisation, static shapes.
Larger (prefill) steps use the dynamic mode (one size exchange).
"""

from __future__ import annotations

import logging
import os

import torch
from vllm.model_executor.layers.fused_moe.activation import MoEActivation
from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod

from .. import ops
from ..ops import _comm
from . import trace

logger = logging.getLogger("ascend_ext")


class AscendExtMoEMethod(UnquantizedFusedMoEMethod):
    def __init__(self, moe) -> None:
        super().__init__(moe)
        self._ours = False
        self._graph_tokens = _largest_graph_batch()
        self._monolithic: bool | None = None

    # ------------------------------------------------------------ selection
    def _unsupported(self, layer) -> str | None:
        par = self.moe.moe_parallel_config
        # ASCEND_EXT_MOE=always also takes single-rank layers (a group of one), e.g. to
        # compare one rank with expert parallelism on the same code path
        forced = os.environ.get("ASCEND_EXT_MOE") == "always" and par.tp_size == 1 and par.dp_size == 1
        checks = (
            (not forced and (not par.use_ep or par.ep_size <= 1), "expert parallelism is off"),
            (par.dp_size != 1, "data parallel > 1"),
            (self.moe.activation != MoEActivation.SILU, f"activation {self.moe.activation}"),
            (self.moe.has_bias, "expert biases"),
            (self.moe.is_lora_enabled, "LoRA"),
            (layer.custom_routing_function is not None, "a custom routing function"),
            (layer.apply_router_weight_on_input, "router weights on the input"),
            (self.moe.moe_parallel_config.enable_eplb, "EPLB"),
            (layer.global_num_experts != self.moe.num_logical_experts, "redundant experts"),
        )
        for failed, what in checks:
            if failed:
                return what
        local, rank = layer.local_num_experts, par.ep_rank if par.use_ep else 0
        expected = torch.full((layer.global_num_experts,), -1, dtype=torch.int32)
        expected[rank * local:(rank + 1) * local] = torch.arange(local, dtype=torch.int32)
        if layer.expert_map is not None and not torch.equal(layer.expert_map.cpu().to(torch.int32), expected):
            return "a non-linear expert placement"
        return None

    def process_weights_after_loading(self, layer) -> None:
        reason = self._unsupported(layer)
        self._ours = reason is None
        if self._ours:
            logger.info("ascend_ext: %s runs expert-parallel route/dispatch/experts/combine", layer.layer_name)
            from vllm.distributed import get_ep_group

            group = get_ep_group()
            self._world, self._rank = group.world_size, group.rank_in_group
            self._group_name = _comm.group_name(group.device_group)
            self._timeout_s = _comm.default_timeout_s()
            _comm.add_observer(_trace_ep)
            self._monolithic = True
            return   # keep the [E_local, 2I, H] / [E_local, H, I] weights as loaded
        logger.info("ascend_ext: %s keeps vLLM's MoE path (%s)", layer.layer_name, reason)
        super().process_weights_after_loading(layer)
        self._monolithic = UnquantizedFusedMoEMethod.is_monolithic.fget(self)

    @property
    def is_monolithic(self) -> bool:
        # A plain attribute once the weights are loaded: torch.compile (vLLM's default mode)
        # traces the MoE runner, and Dynamo evaluated `self._ours or super().is_monolithic`
        # inconsistently (True where the runner branches, False in forward_monolithic's assert).
        if self._monolithic is not None:
            return self._monolithic
        return self._ours or UnquantizedFusedMoEMethod.is_monolithic.fget(self)

    # -------------------------------------------------------------- forward
    def apply_monolithic(self, layer, x: torch.Tensor, router_logits: torch.Tensor, input_ids=None):
        if not self._ours:
            return super().apply_monolithic(layer, x, router_logits, input_ids)
        # one custom op (torch.ops.ascend_ext.ep_moe under torch.compile): the exchange's
        # data-dependent sizes and collectives stay out of the traced graph
        tokens = x.shape[0]
        share = -(-tokens // self._world)
        lo, hi = min(tokens, self._rank * share), min(tokens, (self._rank + 1) * share)
        grouped = bool(layer.use_grouped_topk and layer.num_expert_group)
        mine = ops.ep_moe(
            x[lo:hi], router_logits[lo:hi], layer.w13_weight, layer.w2_weight, layer.top_k, self._group_name,
            scoring=layer.scoring_func, renormalize=layer.renormalize,
            num_expert_group=layer.num_expert_group if grouped else None,
            topk_group=layer.topk_group if grouped else None, correction_bias=layer.e_score_correction_bias,
            routed_scaling_factor=layer.routed_scaling_factor, capacity=share,
            max_graph_capacity=-(-self._graph_tokens // self._world), timeout_s=self._timeout_s,
            score_dtype=vllm_score_dtype(grouped, router_logits))
        out = torch.zeros_like(x)
        out[lo:hi] = mine
        return out


def vllm_score_dtype(grouped: bool, router_logits: torch.Tensor) -> torch.dtype | None:
    """The dtype vLLM's own router scores in, so that tokens pick vLLM's experts: its grouped
    top-k (DeepSeek-V2/V3) on GPUs works in the router logits' dtype; its CPU router and its
    plain softmax top-k upcast to float32 (None, the ops' default). ``layer.routed_scaling_factor``
    is vLLM's router factor (1.0 where vLLM scales the output instead), so it is passed as is."""
    return router_logits.dtype if grouped and router_logits.device.type != "cpu" else None


def _largest_graph_batch() -> int:
    """vLLM's largest CUDA-graph capture size (decode batches up to it may be captured)."""
    from vllm.config import get_current_vllm_config_or_none

    config = get_current_vllm_config_or_none()
    size = getattr(getattr(config, "compilation_config", None), "max_cudagraph_capture_size", None)
    return int(size) if size else 512


def register_moe_method() -> None:
    """Install AscendExtMoEMethod in place of vLLM's unquantized MoE method (idempotent)."""
    from vllm.model_executor.custom_op import op_registry_oot

    if op_registry_oot.get(UnquantizedFusedMoEMethod.__name__) is not AscendExtMoEMethod:
        UnquantizedFusedMoEMethod.register_oot(AscendExtMoEMethod)


def _trace_ep(event: str) -> None:
    if event == "ep_moe":
        trace.note("moe_ep")
