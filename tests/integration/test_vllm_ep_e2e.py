"""Expert parallelism in a real vLLM engine: a tiny Mixtral (GQA attention + top-2 of
8 experts, float32) with tensor parallel 2 and enable_expert_parallel=True routes its
MoE layers through ascend_ext's route -> dispatch -> experts -> combine on both ranks
and generates the same greedy tokens, with the same logprobs, as on one rank (vLLM's
default compilation mode).

float32 is possible because the one-rank run uses the same expert code path
(ASCEND_EXT_MOE=always: a group of one); vLLM's CPU MoE kernel takes only bf16/fp16.
"""

import random

import pytest

from .models import build_tiny_mixtral

from ..conftest import SEED
from .compare import check_logprobs_close
from .vllm_runner import needs_vllm, run_vllm

pytestmark = [pytest.mark.e2e, pytest.mark.distributed, needs_vllm]


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    return build_tiny_mixtral(str(tmp_path_factory.mktemp("tiny_mixtral")))


def test_expert_parallel_tp2_matches_one_rank(tiny_moe):
    rng = random.Random(SEED)
    prompts = [[rng.randrange(1, 512) for _ in range(n)] for n in (4, 29, 64, 90)]
    base = {"model": tiny_moe, "prompts": prompts, "max_tokens": 12, "logprobs": 5}
    llm = {"dtype": "float32", "block_size": 32}
    ep = run_vllm(dict(base, llm=dict(llm, tensor_parallel_size=2, enable_expert_parallel=True)),
                  disable_plugin=False)
    one = run_vllm(dict(base, llm=llm), disable_plugin=False, extra_env={"ASCEND_EXT_MOE": "always"})

    assert len(ep["trace_pids"].get("moe_ep", [])) == 2, f"both ranks must run our MoE: {ep['trace_pids']}"
    assert "moe_ep" in one["trace"] and "attention" in ep["trace"]
    assert ep["compilation_mode"] != "NONE", "vLLM's default mode compiles"
    for out in ep["outputs"]:
        assert len(set(out["token_ids"])) > 3, "degenerate model output proves nothing"
    assert check_logprobs_close(ep["outputs"], one["outputs"], chosen_atol=1e-4) == 0
    assert [o["token_ids"] for o in ep["outputs"]] == [o["token_ids"] for o in one["outputs"]]
