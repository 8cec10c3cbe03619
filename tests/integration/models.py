"""Tiny random-weight models for the end-to-end tests, built locally (nothing is
downloaded), each saved with the demo's locally trained tokenizer (512 ids) so that
text prompts and ``vllm serve`` work.

The Llama factory is the demo's own (:func:`ascend_ext.demo.build_tiny_llama`).
"""

from __future__ import annotations

from ascend_ext.demo import save_pretrained_quietly, build_tiny_llama, build_tokenizer

__all__ = ["build_tiny_llama", "build_tiny_deepseek_v2", "build_tiny_gpt_oss", "build_tiny_mixtral"]


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
        scoring_func="softmax", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        torch_dtype=dtype)
    save_pretrained_quietly(DeepseekV2ForCausalLM(config).to(getattr(torch, dtype)), path)
    build_tokenizer(path, vocab)
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
                           initializer_range=init_range, tie_word_embeddings=False, bos_token_id=1,
                           eos_token_id=2, torch_dtype=dtype)
    save_pretrained_quietly(MixtralForCausalLM(config).to(getattr(torch, dtype)), path)
    build_tokenizer(path, vocab)
    return path


def build_tiny_gpt_oss(path: str, *, seed: int = 2, init_range: float = 0.2, hidden: int = 128, layers: int = 2,
                       heads: int = 4, kv_heads: int = 2, head_dim: int = 64, vocab: int = 512, num_experts: int = 4,
                       top_k: int = 2, sliding_window: int = 32, dtype: str = "bfloat16") -> str:
    """Save a random GptOssForCausalLM (attention sinks, sliding window on even layers, MoE
    with the clamped SwiGLU) to ``path``, unquantised (the released checkpoints are MXFP4).
    The sinks get visibly non-zero values so that they matter."""
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    config = GptOssConfig(
        hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=head_dim, vocab_size=vocab, num_local_experts=num_experts,
        num_experts_per_tok=top_k, sliding_window=sliding_window, max_position_embeddings=2048,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
        initializer_range=init_range, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "yarn", "factor": 2.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                         "original_max_position_embeddings": 1024, "rope_theta": 10000.0},
        torch_dtype=dtype)
    model = GptOssForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.copy_(torch.randn(heads) * 2.0)
    save_pretrained_quietly(model.to(getattr(torch, dtype)), path)
    build_tokenizer(path, vocab)
    return path
