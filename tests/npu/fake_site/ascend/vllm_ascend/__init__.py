"""Fake vllm-ascend for platform-selection tests: registers its platform unconditionally, as the real one does."""


def register():
    return "vllm_ascend.platform.NPUPlatform"
