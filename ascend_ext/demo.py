"""Tiny random-weight models built locally, and a vLLM generation runner.

Used by ``ascend-ext demo`` and by the end-to-end tests (which run
``python -m ascend_ext.demo run SPEC.json OUT.json`` in a fresh process so that
each run resolves its own vLLM platform). Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import sys
import time


def build_tiny_llama(path: str, *, seed: int = 0, init_range: float = 0.2, hidden: int = 128,
                     layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab: int = 512) -> str:
    """Save a random LlamaForCausalLM (float32 weights) to ``path``.

    ``init_range`` well above the default 0.02 makes greedy outputs vary from token
    to token instead of repeating one token, so token equality tests mean something.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                         max_position_embeddings=2048, initializer_range=init_range,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def build_tiny_deepseek_v2(path: str, *, seed: int = 0, init_range: float = 0.25, hidden: int = 128,
                           layers: int = 2, heads: int = 4, vocab: int = 512,
                           num_experts: int = 8, top_k: int = 2, dtype: str = "bfloat16") -> str:
    """Save a random DeepseekV2ForCausalLM (MLA + MoE) to ``path``.

    kv_lora_rank 512 + rope 64 = the 576-wide latent cache vLLM's CPU MLA requires;
    bf16 weights by default because vLLM's CPU MoE kernel rejects float32.
    """
    import torch
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    torch.manual_seed(seed)
    config = DeepseekV2Config(
        hidden_size=hidden, intermediate_size=2 * hidden, moe_intermediate_size=hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        vocab_size=vocab, max_position_embeddings=2048, initializer_range=init_range,
        kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64, qk_nope_head_dim=32,
        v_head_dim=32, n_routed_experts=num_experts, n_shared_experts=1, num_experts_per_tok=top_k,
        first_k_dense_replace=1, moe_layer_freq=1, n_group=1, topk_group=1,
        topk_method="greedy", norm_topk_prob=False, routed_scaling_factor=1.0,
        scoring_func="softmax", tie_word_embeddings=False)
    model = DeepseekV2ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(path)
    return path


def build_tiny_mixtral(path: str, *, seed: int = 1, init_range: float = 0.2, hidden: int = 128,
                       layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab: int = 512,
                       num_experts: int = 8, top_k: int = 2, dtype: str = "float32") -> str:
    """Save a random MixtralForCausalLM (GQA attention + top-k MoE) to ``path``."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    config = MixtralConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                           num_local_experts=num_experts, num_experts_per_tok=top_k, max_position_embeddings=2048,
                           initializer_range=init_range, tie_word_embeddings=False)
    MixtralForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(path)
    return path


def run(spec: dict) -> dict:
    """Generate with vLLM in this process.

    spec: {"model": dir, "prompts": [[ids...], ...] or [[[ids...], ...], ...] (one list per
    generate call), "max_tokens": int, "logprobs": top-k to record, "llm": {LLM kwargs}}.
    Returns the platform, the attention backend of every layer, and per prompt the greedy
    token ids, their logprobs, the top-k logprobs per step and the number of prefix-cached
    prompt tokens, plus timings.
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in-process: inspectable
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.platforms import current_platform

    kwargs = dict(skip_tokenizer_init=True, enforce_eager=True, gpu_memory_utilization=0.3,
                  max_model_len=512)
    kwargs.update(spec.get("llm", {}))
    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], **kwargs)
    start_s = time.perf_counter() - t0
    top_k = spec.get("logprobs", 0)
    params = SamplingParams(temperature=0.0, max_tokens=spec.get("max_tokens", 16), logprobs=top_k,
                            detokenize=False, ignore_eos=True)
    batches = spec["prompts"]
    if batches and isinstance(batches[0][0], int):
        batches = [batches]
    results, gen_s, new_tokens = [], 0.0, 0
    for batch in batches:
        t0 = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in batch], params, use_tqdm=False)
        gen_s += time.perf_counter() - t0
        for out in outs:
            completion = out.outputs[0]
            new_tokens += len(completion.token_ids)
            results.append({
                "prompt_len": len(out.prompt_token_ids),
                "token_ids": list(completion.token_ids),
                "logprobs": [lp[t].logprob for t, lp in zip(completion.token_ids, completion.logprobs)],
                "top_logprobs": [{str(t): v.logprob for t, v in lp.items()} for lp in completion.logprobs],
                "num_cached_tokens": out.num_cached_tokens or 0,
            })
    layers = llm.llm_engine.vllm_config.compilation_config.static_forward_context
    backends = sorted({layer.attn_backend.get_name() for layer in layers.values()
                       if hasattr(layer, "attn_backend")})
    return {"platform": f"{type(current_platform).__module__}.{type(current_platform).__name__}",
            "attention_backends": backends, "outputs": results, "engine_start_s": start_s,
            "generate_s": gen_s, "new_tokens": new_tokens,
            "tokens_per_s": new_tokens / gen_s if gen_s > 0 else 0.0}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] != "run":
        print("usage: python -m ascend_ext.demo run SPEC.json OUT.json", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        spec = json.load(f)
    result = run(spec)
    with open(argv[2], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
