"""Platform selection with a fake NPU present/absent and a fake vllm-ascend present/absent
(fresh processes; fakes on PYTHONPATH): register() picks the documented platform, and
vLLM always starts resolving a platform (it refuses two active out-of-tree platforms)."""

import os
import subprocess
import sys

import pytest

import ascend_ext

from ..integration.vllm_runner import needs_vllm

FAKES = os.path.join(os.path.dirname(__file__), "fake_site")


def _run(code: str, *, npu: bool | None, ascend: bool, extra_env: dict | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("ASCEND_EXT_DISABLE", "VLLM_PLUGINS")}
    paths = ([os.path.join(FAKES, "npu")] if npu is not None else []) + ([os.path.join(FAKES, "ascend")] if ascend else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    env["FAKE_NPU_PRESENT"] = "1" if npu else "0"
    env.update(extra_env or {})
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


REGISTER = "import ascend_ext; print(ascend_ext.register())"
CURRENT = ("from vllm.platforms import current_platform as p; "
           "print(type(p).__module__ + '.' + type(p).__name__)")


@pytest.mark.parametrize("npu,ascend,plugins,expected", [
    (None, False, None, ascend_ext.CPU_PLATFORM),                 # no torch_npu
    (False, False, None, ascend_ext.CPU_PLATFORM),                # torch_npu, no device
    (True, False, None, "None"),                                  # NPU without vllm-ascend
    (True, True, None, "None"),                                   # vllm-ascend's platform active: defer
    (True, True, "ascend_ext,ascend_ext_backends", ascend_ext.NPU_PLATFORM),   # vllm-ascend's excluded
])
def test_register_picks_documented_platform(npu, ascend, plugins, expected):
    env = {"VLLM_PLUGINS": plugins} if plugins else None
    assert _run(REGISTER, npu=npu, ascend=ascend, extra_env=env) == expected


@pytest.mark.e2e
@needs_vllm
@pytest.mark.parametrize("plugins,expected", [
    (None, "vllm_ascend.platform.NPUPlatform"),
    ("ascend_ext,ascend_ext_backends", ascend_ext.NPU_PLATFORM),
])
def test_vllm_starts_with_vllm_ascend_installed(plugins, expected):
    env = {"VLLM_PLUGINS": plugins} if plugins else None
    assert _run(CURRENT, npu=True, ascend=True, extra_env=env) == expected
