"""MLA ops: absorbed latent-cache decode and latent cache writes."""

from ..._devices import ANY_DEVICE
from .._availability import triton_available
from .._dispatch import register
from .api import concat_and_cache_mla, mla_decode

for _op in ("mla_decode", "concat_and_cache_mla"):
    register(_op, "reference", f"ascend_ext.ops.mla.reference:{_op}", devices=ANY_DEVICE)
register("mla_decode", "triton", "ascend_ext.ops.mla.triton_decode:mla_decode",
         devices=("cuda", "npu", "cpu"), available=triton_available)

__all__ = ["concat_and_cache_mla", "mla_decode"]
