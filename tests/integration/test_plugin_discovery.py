"""vLLM finds our platform through the entry point; ASCEND_EXT_DISABLE=1 turns it off."""

import pytest

import ascend_ext

from .vllm_runner import discover_platform, needs_vllm


@pytest.mark.e2e
@needs_vllm
def test_vllm_picks_our_platform_and_disable_flag_restores_vllms():
    assert discover_platform({}) == ascend_ext.CPU_PLATFORM
    assert discover_platform({"ASCEND_EXT_DISABLE": "1"}) == "vllm.platforms.cpu.CpuPlatform"


def test_register_is_idempotent_and_respects_disable(monkeypatch):
    monkeypatch.delenv("ASCEND_EXT_DISABLE", raising=False)
    first = ascend_ext.register()
    assert first == ascend_ext.register()
    monkeypatch.setenv("ASCEND_EXT_DISABLE", "1")
    assert ascend_ext.register() is None
