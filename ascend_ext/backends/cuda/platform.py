"""CUDA platform: vLLM's CUDA platform (worker, graphs, NCCL), ascend_ext attention and MLA."""

from vllm.platforms.cuda import CudaPlatform

from ...integration.platform_mixin import AscendExtPlatformMixin


class AscendExtCudaPlatform(AscendExtPlatformMixin, CudaPlatform):
    pass
