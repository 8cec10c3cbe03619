"""What every ascend_ext platform overrides on top of vLLM's platform for its hardware."""

from vllm.utils.import_utils import resolve_obj_by_qualname

from . import MLA_PREFILL_BACKEND_PATH, compat
from .selection import attention_backend_path

_serving_mla = False   # whether the latest MLA backend selection chose ours


def _our_mla_prefill():
    """Our MLA prefill backend class when our MLA backend serves, else None."""
    return resolve_obj_by_qualname(MLA_PREFILL_BACKEND_PATH) if _serving_mla else None


class AscendExtPlatformMixin:
    """Attention and MLA layers go to ascend_ext backends when they support the layer."""

    @classmethod
    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads=None) -> str:
        global _serving_mla
        path = attention_backend_path(selected_backend, attn_selector_config)
        if attn_selector_config.use_mla:
            # the MLA layer picks its prefill backend right after this, through a selector that
            # vLLM 0.30 and vllm-ascend's patch do not route through get_mla_prefill_backend_cls
            _serving_mla = path is not None
            compat.route_mla_prefill(_our_mla_prefill)
        if path is None:
            return super().get_attn_backend_cls(selected_backend, attn_selector_config, num_heads)
        return path

    @classmethod
    def get_mla_prefill_backend_cls(cls, mla_selector_config):
        """MLA prefill (decompressed K/V, MHA) runs through ascend_ext.ops.flash_attn_varlen
        when our MLA backend serves (vLLM >= 0.32 asks the platform)."""
        ours = _our_mla_prefill()
        return ours if ours is not None else super().get_mla_prefill_backend_cls(mla_selector_config)
