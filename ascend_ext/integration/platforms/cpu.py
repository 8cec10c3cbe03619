"""CPU platform: vLLM's CPU worker and model runner, ascend_ext attention."""

from vllm.platforms.cpu import CpuPlatform

from ..selection import attention_backend_path


class AscendExtCpuPlatform(CpuPlatform):
    @classmethod
    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads=None) -> str:
        path = attention_backend_path(selected_backend, attn_selector_config)
        if path is None:
            return super().get_attn_backend_cls(selected_backend, attn_selector_config, num_heads)
        return path
