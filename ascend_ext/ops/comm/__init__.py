"""Communication-overlapped ops for tensor parallelism."""

from ..._devices import ANY_DEVICE
from .._dispatch import register
from .tiled_allreduce import attention_o_proj_allreduce, choose_tile_tokens, tiled_linear_allreduce

register("tiled_linear_allreduce", "reference", "ascend_ext.ops.comm.tiled_allreduce:tiled_reference",
         devices=ANY_DEVICE)

__all__ = ["attention_o_proj_allreduce", "choose_tile_tokens", "tiled_linear_allreduce"]
