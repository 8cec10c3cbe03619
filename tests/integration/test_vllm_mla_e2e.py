"""A tiny DeepSeek-V2 (MLA + MoE, bf16, random weights) through vLLM on CPU: our MLA
backend generates what vLLM's own CPU MLA backend generates (vLLM's default compilation mode)."""

import random

import pytest

from ascend_ext.integration import compat

from .models import build_tiny_deepseek_v2

from ..conftest import SEED
from .compare import check_logprobs_close
from .vllm_runner import needs_vllm, run_vllm

pytestmark = [pytest.mark.e2e, needs_vllm]


@pytest.fixture(scope="module")
def tiny_deepseek(tmp_path_factory):
    return build_tiny_deepseek_v2(str(tmp_path_factory.mktemp("tiny_deepseek")), seed=0)


# Open (issue 14): on vLLM 0.30 only, with chunked prefill (MLA context chunks), the chosen-token
# logprobs of about half the runs differ from vLLM's own CPU MLA by 0.16-0.18 (> 0.15) on the
# 70-token prompt; whole-prompt prefill matches, and vLLM 0.32 matches either way.
_CHUNKED_ON_030 = pytest.mark.xfail(compat.string_backend_names() is False and compat.vllm_version() is not None,
                                    reason="vLLM 0.30 + chunked MLA prefill: logprobs up to 0.18 apart in some "
                                           "runs (open, see the comment above)", strict=False)


@pytest.mark.parametrize("batched_tokens", [pytest.param(32, marks=_CHUNKED_ON_030), 512],
                         ids=["chunked_prefill", "whole_prefill"])
def test_mla_greedy_tokens_match_vllm_cpu_mla(tiny_deepseek, batched_tokens):
    rng = random.Random(SEED)
    prompts = [[rng.randrange(1, 512) for _ in range(n)] for n in (3, 33, 70, 100)]
    spec = {"model": tiny_deepseek, "prompts": prompts, "max_tokens": 16, "logprobs": 5,
            "llm": {"dtype": "bfloat16", "block_size": 32, "max_num_batched_tokens": batched_tokens,
                    "max_num_seqs": 8}}    # 32-token steps: the longer prompts prefill in chunks
    theirs = run_vllm(spec, disable_plugin=True)
    ours = run_vllm(spec, disable_plugin=False)
    assert ours["attention_backends"] == ["ASCEND_EXT_MLA"]
    assert ours["compilation_mode"] == theirs["compilation_mode"] != "NONE", "vLLM's default mode compiles"
    assert theirs["attention_backends"] != ["ASCEND_EXT_MLA"]
    # prefill and decode both ran through ascend_ext (vLLM 0.30 has no platform hook for the
    # prefill backend: compat.route_mla_prefill routes it)
    assert {"mla_prefill", "mla_decode"} <= set(ours["trace"]), ours["trace"]
    for out in ours["outputs"]:
        assert len(set(out["token_ids"])) > 3, "degenerate model output proves nothing"
    # bf16 weights and a different kernel order: near-ties may flip, real errors may not
    diverged = check_logprobs_close(ours["outputs"], theirs["outputs"], chosen_atol=0.15)
    print(f"diverged prompts: {diverged}; ours {[o['token_ids'] for o in ours['outputs']]}")
    assert diverged <= 1, f"{diverged} of {len(prompts)} prompts diverged"
