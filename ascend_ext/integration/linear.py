"""Tiling-AllReduce for vLLM's row-parallel output projections (no math: ops call only).

Registered out-of-tree for vLLM's ``RowParallelLinear``. With tensor parallelism > 1
and at least ``ASCEND_EXT_TILED_AR_MIN_TOKENS`` tokens (default 512: prefill; decode
keeps the one-shot path), an unquantised layer in scope computes
:func:`ascend_ext.ops.tiled_linear_allreduce`: per token tile a matmul whose
all-reduce overlaps the next tile's matmul. Scope ``ASCEND_EXT_TILED_AR``:
``o_proj`` (attention output projections, default), ``all`` (every row-parallel
layer), ``off``. Under torch.compile tracing the plain vLLM path runs.
"""

from __future__ import annotations

import os

import torch
from vllm.model_executor.layers.linear import RowParallelLinear, UnquantizedLinearMethod

from .. import ops
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
            # vLLM's CPU path would repack the weight into a oneDNN handle and drop it;
            # the tiled matmuls need the plain [N, K_local] weight
            self._cpu_skip_gemm_dispatch = True

    def _tiled(self, x: torch.Tensor) -> bool:
        return (self._in_scope and x.dim() == 2
                and x.shape[0] >= int(os.environ.get("ASCEND_EXT_TILED_AR_MIN_TOKENS", "512"))
                and not torch.compiler.is_compiling())

    def forward(self, input_):
        if not self._tiled(input_):
            return super().forward(input_)
        from vllm.distributed import get_tp_group

        trace.note("tiled_allreduce")
        bias = None if self.skip_bias_add else self.bias
        output = ops.tiled_linear_allreduce(input_, self.weight, bias, get_tp_group().device_group)
        if not self.return_bias:
            return output
        return output, (self.bias if self.skip_bias_add else None)


def register_linear() -> None:
    """Install AscendExtRowParallelLinear in place of vLLM's RowParallelLinear (idempotent)."""
    from vllm.model_executor.custom_op import op_registry_oot

    if op_registry_oot.get(RowParallelLinear.__name__) is not AscendExtRowParallelLinear:
        RowParallelLinear.register_oot(AscendExtRowParallelLinear)
