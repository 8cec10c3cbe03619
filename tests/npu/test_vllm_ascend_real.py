"""ascend_ext's NPU platform on the real vllm-ascend 0.30.0rc2 source (downloaded from the
package index, not installed; torch_npu replaced by the smallest stand-in, only in the
child process): after vllm-ascend's pre_register_and_update (which patches vLLM's MLA
prefill selector), vLLM's backend selection picks our attention, MLA and MLA prefill
backends. Runs on the vLLM release vllm-ascend 0.30 targets (the compatibility job).
"""

import json
import os
import subprocess
import sys

import pytest

from ascend_ext.integration import compat

from . import ascend_packages

pytestmark = pytest.mark.skipif(
    not (compat.vllm_version() or "").startswith("0.30."),
    reason=f"vllm-ascend {ascend_packages.VLLM_ASCEND[1]} targets vLLM 0.30 (installed: {compat.vllm_version()}); "
           "the compatibility job (make test-vllm030) runs this")

OURS = {"attention": "ascend_ext.integration.attention_backend.AscendExtAttentionBackend",
        "mla": "ascend_ext.integration.mla_backend.AscendExtMLABackend",
        "mla_prefill": "ascend_ext.integration.mla_backend.AscendExtMLAPrefillBackend"}


def _select(mode: str) -> dict:
    source = str(ascend_packages.vllm_ascend_source())
    env = dict(os.environ, ASCEND_EXT_DISABLE="1",   # vLLM's own platform resolution stays on CPU
               PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "tests.npu.vllm_ascend_check", source, mode], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_our_backends_win_on_vllm_ascend():
    got = _select("ours")
    assert got["vllm_ascend_patched_prefill"], "vllm-ascend's patch_mla_prefill_backend did not run"
    assert {k: got[k] for k in OURS} == OURS


def test_controls_vllm_ascend_alone_and_without_our_prefill_routing():
    """The same selection with vllm-ascend's platform gives its backends, and without our
    routing its MLA prefill patch wins: the assertions above can fail."""
    theirs = _select("theirs")
    assert theirs["attention"].startswith("vllm_ascend.") and theirs["mla"].startswith("vllm_ascend.")
    assert theirs["mla_prefill"].endswith("AscendMLAPrefillBackend")
    unrouted = _select("ours_unrouted")
    assert unrouted["mla"] == OURS["mla"]
    assert unrouted["mla_prefill"] == "vllm_ascend.patch.platform.patch_mla_prefill_backend.AscendMLAPrefillBackend"
