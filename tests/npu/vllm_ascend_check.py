"""Run in a fresh process by test_vllm_ascend_real.py: import the real vllm-ascend source
(sys.argv[1]) with the smallest torch_npu stand-in that lets its modules import, make a
platform current (sys.argv[2]: "ours" = ascend_ext's NPU platform, "theirs" = vllm-ascend's
NPUPlatform, "ours_unrouted" = ours with the MLA prefill routing disabled), run its
pre_register_and_update and vLLM's backend selection, and print what vLLM would use (JSON).

The stand-in, only here: an empty ``torch_npu`` package (any submodule/attribute resolves to
a placeholder; capitalised ones to classes, for type annotations) and ``torch.npu`` with
``is_available() -> False``; plus vllm_ascend/_build_info.py's one value, which its build
generates (``__device_type__``, A2 here).
"""

import importlib.machinery
import json
import sys
import types


class _Placeholder(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        child = type(name, (), {}) if name[:1].isupper() else _Placeholder(f"{self.__name__}.{name}")
        setattr(self, name, child)
        return child

    def __call__(self, *args, **kwargs):
        return _Placeholder(self.__name__ + "()")


class _TorchNpuFinder:
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torch_npu" or fullname.startswith("torch_npu."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Placeholder(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def install_stand_ins(source: str) -> None:
    import torch

    sys.path.insert(0, source)
    sys.meta_path.insert(0, _TorchNpuFinder())
    torch.npu = _Placeholder("torch.npu")
    torch.npu.is_available = lambda: False
    torch.npu.device_count = lambda: 0
    sys.modules["vllm_ascend._build_info"] = types.SimpleNamespace(__device_type__="A2")


def main(source: str, mode: str) -> None:
    install_stand_ins(source)
    import torch
    import vllm.model_executor.layers.attention.mla_attention as mla_attention
    import vllm.platforms
    from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import get_attn_backend
    from vllm_ascend.platform import NPUPlatform

    from ascend_ext.backends.npu.platform import AscendExtNPUPlatform
    from ascend_ext.integration import compat

    platform_cls = NPUPlatform if mode == "theirs" else AscendExtNPUPlatform
    if mode == "ours_unrouted":
        compat.route_mla_prefill = lambda ours: None
    vllm_config = VllmConfig(device_config=DeviceConfig(device="cpu"))   # torch has no "npu" device here
    vllm.platforms._current_platform = platform_cls()
    selector_before = mla_attention.get_mla_prefill_backend
    platform_cls.pre_register_and_update()
    from vllm_ascend.ascend_config import init_ascend_config
    init_ascend_config(vllm_config)     # what vllm-ascend's check_and_update_config does first
    patched = mla_attention.get_mla_prefill_backend is not selector_before
    with set_current_vllm_config(vllm_config):
        attention = get_attn_backend(128, torch.bfloat16, "auto")
        mla = get_attn_backend(576, torch.bfloat16, "auto", use_mla=True)
        prefill = mla_attention.get_mla_prefill_backend(vllm_config)
    AttentionBackendEnum[attention.get_name()]        # the attention layer's lookup must succeed
    name = lambda cls: f"{cls.__module__}.{cls.__qualname__}"  # noqa: E731
    print(json.dumps({"platform": name(platform_cls), "vllm_ascend_patched_prefill": patched,
                      "attention": name(attention), "mla": name(mla), "mla_prefill": name(prefill)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
