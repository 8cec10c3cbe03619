"""What every ascend_ext platform overrides on top of vLLM's platform for its hardware."""

from vllm.utils.import_utils import resolve_obj_by_qualname

from . import MLA_PREFILL_BACKEND_PATH
from .selection import attention_backend_path


class AscendExtPlatformMixin:
    """Attention and MLA layers go to ascend_ext backends when they support the layer."""

    @classmethod
    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads=None) -> str:
        path = attention_backend_path(selected_backend, attn_selector_config)
        if path is None:
            return super().get_attn_backend_cls(selected_backend, attn_selector_config, num_heads)
        return path

    @classmethod
    def get_mla_prefill_backend_cls(cls, mla_selector_config):
        """MLA prefill (decompressed K/V, MHA) runs through ascend_ext.ops.flash_attn_varlen."""
        return resolve_obj_by_qualname(MLA_PREFILL_BACKEND_PATH)
