"""Tiling-AllReduce for vLLM's row-parallel output projections (no math: ops call only).

Registered out-of-tree for vLLM's ``RowParallelLinear``. With tensor parallelism > 1,
an unquantised layer in scope computes :func:`ascend_ext.ops.tiled_linear_allreduce`
(the ``torch.ops.ascend_ext`` custom op under torch.compile, so compiled graphs keep
it): from ``ASCEND_EXT_TILED_AR_MIN_TOKENS`` tokens (default 512: prefill) per token
tile a matmul whose all-reduce overlaps the next tile's matmul; below it (decode) one
matmul reduced by vLLM's own tensor-parallel all-reduce, registered with the op for
this group. The size decision is made inside the op, so no shape branch is traced.
Scope ``ASCEND_EXT_TILED_AR``: ``o_proj`` (attention output projections, default),
``all`` (every row-parallel layer), ``off``.
"""

from __future__ import annotations

import os

import torch
from vllm.model_executor.layers.linear import RowParallelLinear, UnquantizedLinearMethod

from .. import ops
from ..ops import _comm
from . import trace

_ATTENTION_OUTPUTS = ("o_proj", "out_proj", "dense")


def _scope() -> str:
    return os.environ.get("ASCEND_EXT_TILED_AR", "o_proj")


class AscendExtRowParallelLinear(RowParallelLinear):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        scope = _scope()
        self._in_scope = (scope != "off" and self.tp_size > 1 and self.reduce_results and self.input_is_parallel
                          and isinstance(self.quant_method, UnquantizedLinearMethod)
                          and (scope == "all" or self.prefix.rsplit(".", 1)[-1] in _ATTENTION_OUTPUTS))
        if self._in_scope:
            from vllm.distributed import get_tp_group

            # vLLM's CPU path would repack the weight into a oneDNN handle and drop it;
            # the tiled matmuls need the plain [N, K_local] weight
            self._cpu_skip_gemm_dispatch = True
            tp_group = get_tp_group()
            self._group_name = _comm.group_name(tp_group.device_group)
            _comm.register_group(self._group_name, tp_group.all_reduce)
            self._min_tokens = int(os.environ.get("ASCEND_EXT_TILED_AR_MIN_TOKENS", "512"))
            self._timeout_s = _comm.default_timeout_s()

    def forward(self, input_):
        if not self._in_scope or input_.dim() != 2:
            return super().forward(input_)
        bias = None if self.skip_bias_add else self.bias
        output = ops.tiled_linear_allreduce(input_, self.weight, bias, self._group_name,
                                            min_tokens=self._min_tokens, timeout_s=self._timeout_s)
        if not self.return_bias:
            return output
        return output, (self.bias if self.skip_bias_add else None)


def register_linear() -> None:
    """Install AscendExtRowParallelLinear in place of vLLM's RowParallelLinear (idempotent)."""
    from vllm.model_executor.custom_op import op_registry_oot

    if op_registry_oot.get(RowParallelLinear.__name__) is not AscendExtRowParallelLinear:
        RowParallelLinear.register_oot(AscendExtRowParallelLinear)
    _comm.add_observer(_trace_pipelined)


def _trace_pipelined(event: str) -> None:
    if event == "tiled_linear_allreduce":
        trace.note("tiled_allreduce")
