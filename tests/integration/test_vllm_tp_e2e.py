"""Tiling-AllReduce in a real vLLM engine: a tiny Llama (float32) with tensor parallel 2
(vLLM's default compilation mode) computes its attention output projections with
ascend_ext.ops.tiled_linear_allreduce (threshold lowered so that prefill tiles) and
generates the same greedy tokens, with the same logprobs, as vLLM alone with tensor
parallel 1. The tiled op is a torch.ops.ascend_ext custom op, so the compiled graph keeps it."""

import random

import pytest

from ..conftest import SEED
from .compare import check_logprobs_close
from .models import build_tiny_llama
from .vllm_runner import needs_vllm, run_vllm

pytestmark = [pytest.mark.e2e, pytest.mark.distributed, needs_vllm]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    model = build_tiny_llama(str(tmp_path_factory.mktemp("tiny_llama_tp")), seed=3)
    rng = random.Random(SEED)
    prompts = [[rng.randrange(1, 512) for _ in range(n)] for n in (5, 48, 100)]
    base = {"model": model, "prompts": prompts, "max_tokens": 12, "logprobs": 5}
    llm = {"dtype": "float32", "block_size": 32}
    tp2 = run_vllm(dict(base, llm=dict(llm, tensor_parallel_size=2)), disable_plugin=False,
                   extra_env={"ASCEND_EXT_TILED_AR_MIN_TOKENS": "16"})
    tp1 = run_vllm(dict(base, llm=llm), disable_plugin=True)
    return tp2, tp1


def test_tp2_default_mode_matches_tp1(runs):
    tp2, tp1 = runs
    assert tp2["compilation_mode"] != "NONE"
    assert "attention" in tp2["trace"]
    assert check_logprobs_close(tp2["outputs"], tp1["outputs"], chosen_atol=1e-4) == 0
    assert [o["token_ids"] for o in tp2["outputs"]] == [o["token_ids"] for o in tp1["outputs"]]


def test_tp2_default_mode_runs_tiled_allreduce_on_both_ranks(runs):
    tp2, _ = runs
    assert len(tp2["trace_pids"].get("tiled_allreduce", [])) == 2, tp2["trace_pids"]
