"""Tiling-AllReduce in a real vLLM engine: a tiny Llama (float32) with tensor parallel 2
computes its attention output projections with ascend_ext.ops.tiled_linear_allreduce
(threshold lowered so that prefill tiles) and generates the same greedy tokens, with the
same logprobs, as with tensor parallel 1."""

import random

import pytest

from .models import build_tiny_llama

from ..conftest import SEED
from .compare import check_logprobs_close
from .vllm_runner import needs_vllm, run_vllm

pytestmark = [pytest.mark.e2e, pytest.mark.distributed, needs_vllm]


def test_tiled_allreduce_tp2_matches_tp1(tmp_path):
    model = build_tiny_llama(str(tmp_path / "tiny_llama"), seed=3)
    rng = random.Random(SEED)
    prompts = [[rng.randrange(1, 512) for _ in range(n)] for n in (5, 48, 100)]
    base = {"model": model, "prompts": prompts, "max_tokens": 12, "logprobs": 5}
    llm = {"dtype": "float32", "block_size": 32}
    tp2 = run_vllm(dict(base, llm=dict(llm, tensor_parallel_size=2)), disable_plugin=False,
                   extra_env={"ASCEND_EXT_TILED_AR_MIN_TOKENS": "16"})
    tp1 = run_vllm(dict(base, llm=llm), disable_plugin=True)
    assert len(tp2["trace_pids"].get("tiled_allreduce", [])) == 2, tp2["trace_pids"]
    assert "attention" in tp2["trace"]
    assert check_logprobs_close(tp2["outputs"], tp1["outputs"], chosen_atol=1e-4) == 0
    assert [o["token_ids"] for o in tp2["outputs"]] == [o["token_ids"] for o in tp1["outputs"]]
