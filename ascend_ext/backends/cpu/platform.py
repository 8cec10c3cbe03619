"""CPU platform: vLLM's CPU worker and model runner, ascend_ext attention and MLA."""

from vllm.platforms.cpu import CpuPlatform

from ...integration.platform_mixin import AscendExtPlatformMixin


class AscendExtCpuPlatform(AscendExtPlatformMixin, CpuPlatform):
    pass
