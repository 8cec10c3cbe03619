"""Fake vllm-ascend NPUPlatform (only what platform resolution touches)."""
from vllm.platforms.interface import Platform, PlatformEnum


class NPUPlatform(Platform):
    _enum = PlatformEnum.OOT
    device_name = "npu"
    device_type = "npu"
