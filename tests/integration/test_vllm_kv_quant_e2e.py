"""vLLM ``--kv-cache-dtype fp8`` on CPU through this plugin: the reference paged attention
(the native CPU kernels read no quantised cache) generates what vLLM's own CPU backend
generates with its fp8 cache; with the native kernels bound, engine start fails at backend
selection with a message naming the implementation to select."""

import random

import pytest

from ascend_ext.backends.cpu.native import native_available
from ascend_ext.integration import attention_backend_name

from ..conftest import SEED
from .models import build_tiny_llama
from .vllm_runner import needs_vllm, run_vllm

pytestmark = [pytest.mark.e2e, needs_vllm]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    rng = random.Random(SEED)
    prompts = [[rng.randrange(1, 512) for _ in range(n)] for n in (5, 40, 70)]
    model = build_tiny_llama(str(tmp_path_factory.mktemp("tiny_llama_fp8kv")), seed=0)
    return {"model": model, "prompts": prompts, "max_tokens": 16,
            "llm": {"dtype": "float32", "block_size": 32, "kv_cache_dtype": "fp8", "enforce_eager": True,
                    "max_num_batched_tokens": 48, "max_num_seqs": 4}}


def test_fp8_kv_cache_matches_vllm_cpu_backend(spec):
    theirs = run_vllm(spec, disable_plugin=True)
    ours = run_vllm(spec, disable_plugin=False, extra_env={"ASCEND_EXT_IMPL": "paged_attention=reference"})
    assert ours["attention_backends"] == [attention_backend_name()]
    assert "impl paged_attention=reference" in ours["trace"], ours["trace"]
    worst = 0.0
    for i, (a, b) in enumerate(zip(ours["outputs"], theirs["outputs"])):
        assert a["token_ids"] == b["token_ids"], f"prompt {i}: {a['token_ids']} != {b['token_ids']}"
        assert len(set(a["token_ids"])) > 3, "degenerate model output proves nothing"
        worst = max(worst, max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"])))
    print(f"max |logprob difference| = {worst:.3g}")
    assert worst < 1e-3, f"chosen-token logprobs differ by {worst}"


@pytest.mark.skipif(native_available("cpu") is not None, reason="the native CPU extension is not built")
def test_fp8_kv_cache_with_native_kernels_fails_at_selection(spec):
    with pytest.raises(AssertionError) as failure:
        run_vllm(spec, disable_plugin=False)
    message = str(failure.value)
    assert "'native' implementation of paged_attention on cpu does not support a quantised KV cache" in message
    assert "ASCEND_EXT_IMPL=paged_attention=<name>" in message
