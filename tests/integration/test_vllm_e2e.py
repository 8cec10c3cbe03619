"""A real vLLM engine on CPU with this plugin generates exactly what vLLM's own
CPU attention backend generates (float32 model, so rounding cannot excuse a difference),
in vLLM's default compilation mode and, once, in eager mode."""

import random

import pytest

from ascend_ext.integration import attention_backend_name
from ascend_ext.backends.cpu.native import kv_tiles_in_place, native_available, value_pairs_supported

from ..conftest import SEED
from .compare import assert_same_tokens, check_logprobs_close
from .models import build_tiny_llama
from .vllm_runner import needs_vllm, run_vllm

pytestmark = [pytest.mark.e2e, needs_vllm]
OUR_PLATFORM = "ascend_ext.backends.cpu.platform.AscendExtCpuPlatform"


def _prompts():
    rng = random.Random(SEED)
    tok = lambda n: [rng.randrange(1, 512) for _ in range(n)]  # noqa: E731
    long_prompt = tok(100)                          # > 3 KV blocks of 32
    first = [tok(3), tok(17), tok(40), tok(75), long_prompt]
    second = [long_prompt + tok(12), tok(5)]         # shares a 3-block prefix with a cached prompt
    return [first, second]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    model = build_tiny_llama(str(tmp_path_factory.mktemp("tiny_llama")), seed=0)
    return {"model": model, "prompts": _prompts(), "max_tokens": 24,
            "llm": {"dtype": "float32", "block_size": 32, "enable_prefix_caching": True,
                    "max_num_batched_tokens": 32, "max_num_seqs": 8}}   # 32 < prompt: chunked prefill


@pytest.fixture(scope="module")
def theirs(spec):
    """vLLM's own CPU backend in its default mode: the reference for both of our modes."""
    result = run_vllm(spec, disable_plugin=True)
    assert result["platform"] == "vllm.platforms.cpu.CpuPlatform"
    assert result["attention_backends"] == ["CPU_ATTN"]
    return result


@pytest.mark.parametrize("enforce_eager", [False, True], ids=["default_mode", "eager"])
def test_greedy_tokens_match_vllm_cpu_backend(spec, theirs, enforce_eager):
    ours = run_vllm(dict(spec, llm=dict(spec["llm"], enforce_eager=enforce_eager)), disable_plugin=False)

    assert ours["platform"] == OUR_PLATFORM
    assert ours["attention_backends"] == [attention_backend_name()]   # CUSTOM on vLLM 0.30
    assert ours["compilation_mode"] == ("NONE" if enforce_eager else theirs["compilation_mode"])
    if not enforce_eager:
        assert ours["compilation_mode"] != "NONE", "vLLM's default mode should compile the model"
    expected_impl = "native" if native_available("cpu") is None else "reference"
    assert f"impl paged_attention={expected_impl}" in ours["trace"], ours["trace"]

    shared = ours["outputs"][5]
    assert shared["prompt_len"] == 112 and shared["num_cached_tokens"] >= 96, "prefix cache was not hit"
    assert_same_tokens(ours["outputs"], theirs["outputs"], chosen_atol=1e-4)


@pytest.mark.skipif(native_available("cpu") is not None or not value_pairs_supported(64),
                    reason="the native kernels of this build do not read value pairs")
def test_bf16_own_layouts_generate_what_rows_generate(spec):
    """bfloat16 in vLLM's default mode: the backend keeps its caches in its own layout ("tiles"
    on AMX hosts, else "pairs"; written and read by the native kernels) and generates what the
    "rows" layout generates: chunked prefill, prefix-cache hits and decode all read it. "pairs"
    runs the rows kernels' arithmetic on values read in place: the very tokens. "tiles" runs
    another kernel (AMX over the tiles; its logprobs differ by up to ~0.03 in this bf16 model, as
    our AMX and AVX-512 paths of the rows layout do between themselves): vLLM's rule,
    tokens agree until a near-tie (each side's token among the other's top 5). (Against vLLM's
    own bf16 CPU kernel tokens differ by rounding.)"""
    bf16 = dict(spec, logprobs=5, llm=dict(spec["llm"], dtype="bfloat16"))
    own = run_vllm(bf16, disable_plugin=False)
    rows = run_vllm(bf16, disable_plugin=False, extra_env={"ASCEND_EXT_KV_LAYOUT": "rows"})
    ours = "tiles" if kv_tiles_in_place(64, 64) else "pairs"
    assert f"kv_layout={ours}" in own["trace"] and "kv_layout=rows" not in own["trace"], own["trace"]
    assert "kv_layout=rows" in rows["trace"], rows["trace"]
    assert own["compilation_mode"] != "NONE"
    if ours == "pairs":
        assert [o["token_ids"] for o in own["outputs"]] == [o["token_ids"] for o in rows["outputs"]]
    else:
        check_logprobs_close(own["outputs"], rows["outputs"], chosen_atol=0.1)
