"""MLA ops: absorbed latent-cache decode and latent cache writes (reference registered
here; device backends register theirs in ``ascend_ext/backends/``)."""

from ..._devices import ANY_DEVICE
from .._dispatch import register
from .api import concat_and_cache_mla, mla_decode

for _op in ("mla_decode", "concat_and_cache_mla"):
    register(_op, "reference", f"ascend_ext.ops.mla.reference:{_op}", devices=ANY_DEVICE)

__all__ = ["concat_and_cache_mla", "mla_decode"]
