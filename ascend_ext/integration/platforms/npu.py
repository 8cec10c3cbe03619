"""NPU platform: vllm-ascend's NPUPlatform (worker, model runner, HCCL communicator, graph
mode) with ascend_ext's attention and MLA backends; MoE and linear hooks come from the
general plugin as on the other platforms. Requires vllm-ascend built against the vLLM
release this package targets (0.32 API); not verified on hardware (no NPU here)."""

from vllm_ascend.platform import NPUPlatform

from ..platform_mixin import AscendExtPlatformMixin


class AscendExtNPUPlatform(AscendExtPlatformMixin, NPUPlatform):
    pass
