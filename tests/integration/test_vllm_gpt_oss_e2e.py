"""A tiny random gpt-oss (attention sinks on every layer, sliding window on even layers, MoE)
through vllm.LLM on CPU: with this plugin, in vLLM's default compiled mode and with cascade
attention forced on (ASCEND_EXT_CASCADE=always), the greedy tokens equal those of vLLM's own
CPU attention backend (float32 model: vLLM's CPU MoE serves gpt-oss in float32, so logprobs
agree to 1e-4). A copy whose sinks are pushed to -1e4 (no sink) generates other tokens: the
sinks matter, so the equality checks them.

Prompts: one batch that fills the prefix cache with a 70-token prompt, then a batch of four
prompts sharing its first two 32-token blocks (prefix-cache hits: their prefill and decode
steps share a block-table prefix, which is what the cascade path needs).
"""

import random
import shutil

import pytest

from ..conftest import SEED
from .compare import assert_same_tokens
from .models import build_tiny_gpt_oss
from .vllm_runner import needs_vllm, run_vllm

pytestmark = [pytest.mark.e2e, needs_vllm]


def _prompts():
    rng = random.Random(SEED)
    tok = lambda n: [rng.randrange(3, 512) for _ in range(n)]  # noqa: E731
    shared = tok(70)
    return [[shared + tok(5), tok(9)], [shared + tok(3), shared + tok(11), shared + tok(1), shared + tok(20)]]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    model = build_tiny_gpt_oss(str(tmp_path_factory.mktemp("tiny_gpt_oss")))
    return {"model": model, "prompts": _prompts(), "max_tokens": 16,
            "llm": {"dtype": "float32", "block_size": 32, "enable_prefix_caching": True, "max_num_seqs": 8}}


def _without_sinks(spec, tmp_path) -> dict:
    """The same model with every sink at -1e4 (its term underflows: attention without sinks)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = tmp_path / "no_sinks"
    shutil.copytree(spec["model"], path)
    weights = load_file(str(path / "model.safetensors"))
    for name in [n for n in weights if n.endswith("sinks")]:
        weights[name] = torch.full_like(weights[name], -1e4)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return dict(spec, model=str(path), llm=dict(spec["llm"], enforce_eager=True))   # eager: a quicker start


def test_gpt_oss_sinks_and_cascade_match_vllm(spec, tmp_path):
    theirs = run_vllm(spec, disable_plugin=True)
    ours = run_vllm(spec, disable_plugin=False, extra_env={"ASCEND_EXT_CASCADE": "always"})
    assert theirs["attention_backends"] == ["CPU_ATTN"]
    assert ours["attention_backends"] == ["ASCEND_EXT"] and ours["compilation_mode"] != "NONE"
    assert "cascade" in ours["trace"], ours["trace"]
    assert [o["num_cached_tokens"] for o in ours["outputs"][2:]] == [64] * 4, "prefix cache was not hit"
    assert_same_tokens(ours["outputs"], theirs["outputs"], chosen_atol=1e-4)
    plain = run_vllm(_without_sinks(spec, tmp_path), disable_plugin=True)
    assert any(a["token_ids"] != b["token_ids"] for a, b in zip(plain["outputs"], theirs["outputs"])), \
        "sinks of -1e4 changed nothing: the test would not see a backend that ignored them"
