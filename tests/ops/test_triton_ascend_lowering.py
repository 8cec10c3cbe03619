"""Every Triton kernel lowers with triton-ascend's compiler to its Ascend IR (TTIR ->
triton-adapter-opt), with the NPU tile configurations, stopping before the binary step
that needs CANN. Runs where the installed triton is triton-ascend (make test-triton-ascend);
skips elsewhere. Negative controls: a broken kernel and a failing adapter tool must fail."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "triton_ascend_lowering.py")
EP_KERNELS = {"layout_count_kernel", "layout_scan_kernel", "layout_offsets_kernel", "layout_place_kernel",
              "scatter_rows_kernel", "gather_reduce_kernel"}
CASES = {
    "flash d128 bf16 causal": ({"flash_varlen_fwd_kernel"}, None),
    "flash d64 fp16 window": ({"flash_varlen_fwd_kernel"}, None),
    "flash d128 bf16 tile-mask": ({"flash_varlen_fwd_kernel"}, None),
    "paged d128 bf16 split": ({"paged_attn_kernel", "combine_splits_kernel"}, None),
    "paged d64 fp16": ({"paged_attn_kernel"}, None),
    "paged d128 bf16 int8 cache": ({"paged_attn_kernel", "combine_splits_kernel"}, None),
    "flash d64 bf16 sinks": ({"flash_varlen_fwd_kernel"}, None),
    "paged d64 bf16 sinks": ({"paged_attn_kernel"}, None),
    "paged d64 bf16 split sinks": ({"paged_attn_kernel", "combine_splits_kernel"}, None),
    "mla 16 heads": ({"mla_decode_kernel"}, None),
    "mla 128 heads s_q 2": ({"mla_decode_kernel"}, None),
    "moe bf16": ({"gate_up_kernel", "down_kernel"}, None),
    "moe int8": ({"gate_up_kernel", "down_kernel"}, None),
    "ep layout + scatter + gather": (EP_KERNELS, None),
    "ep layout + int8 scatter + weighted gather": (EP_KERNELS, None),
}
NPU_TILES = {"flash_varlen_fwd_kernel": {"NUM_SUB": 2}, "gate_up_kernel": {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128}, "paged_attn_kernel": {"BLOCK_N": 128}}

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton.backends.ascend") is None,
                                reason="triton-ascend is not the installed triton (make test-triton-ascend runs this)")


def _lower(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, SCRIPT, *args], env=env, capture_output=True, text=True, timeout=900)


def test_cases_cover_the_script():
    proc = _lower("--list")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == list(CASES)


@pytest.mark.parametrize("case", [pytest.param(name, marks=mark or ()) for name, (_, mark) in CASES.items()])
def test_kernel_lowers_to_ascend_ir(case):
    proc = _lower("--only", case)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert set(lines[-1]["kernels"]) == CASES[case][0], lines[-1]
    for record in lines[:-1]:
        assert record["hivm_or_linalg"], record
        for key, value in NPU_TILES.get(record["kernel"], {}).items():   # the NPU tiles were compiled
            assert record["constants"][key] == value, (key, record)


@pytest.mark.parametrize("control", ["frontend", "adapter"])
def test_lowering_can_fail(control):
    proc = _lower("--control", control, "--only", "moe bf16")   # a case that lowers without the control
    assert proc.returncode != 0
    assert ("undefined_name" if control == "frontend" else "CalledProcessError") in proc.stderr
