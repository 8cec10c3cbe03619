"""Expert parallelism in a real vLLM engine: a tiny Mixtral (GQA attention + top-2 of
8 experts, float32) with tensor parallel 2 and enable_expert_parallel=True routes its
MoE layers through ascend_ext's route -> dispatch -> experts -> combine on both ranks
and generates the same greedy tokens, with the same logprobs, as on one rank.

float32 is possible because the one-rank run uses the same expert code path
(ASCEND_EXT_MOE=always: a group of one); vLLM's CPU MoE kernel takes only bf16/fp16.

vLLM's default mode (torch.compile) is the case tested: the
MoE layer reaches our expert-parallel path through the ep_moe custom op (#13), so Dynamo traces
the layer and the collectives run inside it. (An eager TP2 variant ran here until it only
repeated this case's path at 40 s of suite time.) The one-rank reference runs eagerly.
"""

import random

import pytest

from ..conftest import SEED
from .compare import check_logprobs_close
from .models import build_tiny_mixtral
from .vllm_runner import needs_vllm, run_vllm

pytestmark = [pytest.mark.e2e, pytest.mark.distributed, needs_vllm]
LLM = {"dtype": "float32", "block_size": 32}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    rng = random.Random(SEED)
    prompts = [[rng.randrange(1, 512) for _ in range(n)] for n in (4, 29, 64, 90)]
    model = build_tiny_mixtral(str(tmp_path_factory.mktemp("tiny_mixtral")))
    return {"model": model, "prompts": prompts, "max_tokens": 12, "logprobs": 5}


@pytest.fixture(scope="module")
def one_rank(base):
    return run_vllm(dict(base, llm=dict(LLM, enforce_eager=True)), disable_plugin=False,
                    extra_env={"ASCEND_EXT_MOE": "always"})


def _check(ep: dict, one: dict) -> None:
    assert len(ep["trace_pids"].get("moe_ep", [])) == 2, f"both ranks must run our MoE: {ep['trace_pids']}"
    assert "moe_ep" in one["trace"] and "attention" in ep["trace"]
    for out in ep["outputs"]:
        assert len(set(out["token_ids"])) > 3, "degenerate model output proves nothing"
    assert check_logprobs_close(ep["outputs"], one["outputs"], chosen_atol=1e-4) == 0
    assert [o["token_ids"] for o in ep["outputs"]] == [o["token_ids"] for o in one["outputs"]]


def test_expert_parallel_tp2_default_mode_matches_one_rank(base, one_rank):
    ep = run_vllm(dict(base, llm=dict(LLM, tensor_parallel_size=2, enable_expert_parallel=True)),
                  disable_plugin=False)
    assert ep["compilation_mode"] != "NONE"
    _check(ep, one_rank)
