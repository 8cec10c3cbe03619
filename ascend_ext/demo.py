"""``ascend-ext demo``: a tiny random-weight Llama with a locally trained tokenizer,
generated from by vLLM twice, one engine after the other: with this plugin and with
vLLM's own backends (``ASCEND_EXT_DISABLE=1``). Nothing is downloaded.

Each engine runs in a fresh process (``python -m ascend_ext.demo generate SPEC OUT``)
because vLLM resolves its platform once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

# Training text of the demo tokenizer (BPE over printable ASCII: every id decodes to readable text).
CORPUS = """\
The plugin runs attention, latent attention and mixture-of-experts layers of large language
models on Ascend NPUs, NVIDIA GPUs and plain CPUs. vLLM schedules the requests, keeps the
key and value cache in blocks of tokens and calls the attention backend once per layer and
step. A prefill step reads a whole prompt; a decode step adds one token to every running
sequence. The cache grows by one block when a sequence fills its last block, and a block
table maps each sequence to the blocks that hold its keys and values.
Tokens are numbers; a tokenizer turns text into tokens and tokens back into text. This one
was trained in a fraction of a second on this paragraph, so it knows few words: the model
weights are random, and what the model writes is not meant to make sense. It shows that
text goes in, tokens flow through the kernels of this package, and text comes out, at a
speed that can be compared with vLLM's own backends on the same machine.
Questions and answers, stories and lists, numbers like 1, 2, 3, 42 and 2048, names such as
Ascend, CUDA, Triton, OpenMP and PyTorch, punctuation (commas, colons: semicolons; dots.)
and quotes "like these" all appear here so that the merges cover common English text.
When the server starts it loads the weights, profiles the memory, allocates the cache,
compiles the model graph and then answers requests from many clients at the same time.
"""

CHAT_TEMPLATE = ("{% for message in messages %}<s>{{ message['role'] }}: {{ message['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}<s>assistant:{% endif %}")
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")   # ids 0, 1, 2: Llama's default unk/bos/eos ids


def build_tokenizer(path: str, vocab_size: int = 512) -> str:
    """Train a BPE tokenizer of exactly ``vocab_size`` ids on :data:`CORPUS` and save it (with
    a chat template) as a Hugging Face tokenizer in ``path``. Its alphabet is printable ASCII
    (other characters encode as ``<unk>``), so random-weight models still print readable text."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=[c for c in string.printable if not c.isspace()])
    tok.train_from_iterator([CORPUS], trainer)
    short = vocab_size - tok.get_vocab_size()
    if short > 0:   # too few merges in the corpus: fill the id space so that every id decodes
        tok.add_tokens([f"<extra_{i}>" for i in range(short)])
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(f"tokenizer has {tok.get_vocab_size()} ids, expected {vocab_size}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return path


def build_tiny_llama(path: str, *, seed: int = 0, init_range: float = 0.2, hidden: int = 128,
                     layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab: int = 512,
                     intermediate: int | None = None, max_positions: int = 2048,
                     dtype: str = "float32", tokenizer: bool = True) -> str:
    """Save a random LlamaForCausalLM in ``dtype`` (plus the demo tokenizer) to ``path``.

    ``init_range`` well above the default 0.02 makes greedy outputs vary from token
    to token instead of repeating one token.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         vocab_size=vocab, max_position_embeddings=max_positions,
                         initializer_range=init_range, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, torch_dtype=dtype)
    save_pretrained_quietly(LlamaForCausalLM(config).to(getattr(torch, dtype)), path)
    if tokenizer:
        build_tokenizer(path, vocab)
    return path


def save_pretrained_quietly(model, path: str) -> None:
    """save_pretrained without its progress bar (it would clutter the demo's output)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def generate(spec: dict) -> dict:
    """Generate text with vLLM in this process (vLLM's default compilation settings).

    spec: {"model": dir, "prompts": [text, ...], "max_tokens": int, "llm": {LLM kwargs}}.
    Returns the platform, attention backends, texts, and engine-start / generate timings
    (the second of two identical generate calls is timed; the first warms up).
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")   # engine in this process: inspectable
    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    kwargs = dict(gpu_memory_utilization=0.3, max_model_len=512)
    kwargs.update(spec.get("llm", {}))
    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], **kwargs)
    start_s = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    llm.generate(spec["prompts"], params, use_tqdm=False)
    t0 = time.perf_counter()
    outs = llm.generate(spec["prompts"], params, use_tqdm=False)
    gen_s = time.perf_counter() - t0
    new_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    config = llm.llm_engine.vllm_config
    layers = config.compilation_config.static_forward_context
    backends = sorted({layer.attn_backend.get_name() for layer in layers.values() if hasattr(layer, "attn_backend")})
    return {"platform": f"{type(current_platform).__module__}.{type(current_platform).__name__}",
            "attention_backends": backends, "compilation_mode": config.compilation_config.mode.name,
            "texts": [o.outputs[0].text for o in outs], "engine_start_s": start_s, "generate_s": gen_s,
            "new_tokens": new_tokens, "tokens_per_s": new_tokens / gen_s if gen_s > 0 else 0.0}


def generate_in_subprocess(spec: dict, *, disable_plugin: bool, timeout: float = 900) -> dict:
    """:func:`generate` in a fresh process, with or without this plugin."""
    env = dict(os.environ)
    env.pop("ASCEND_EXT_DISABLE", None)
    if disable_plugin:
        env["ASCEND_EXT_DISABLE"] = "1"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with tempfile.TemporaryDirectory(prefix="ascend_ext_demo_run_") as tmp:
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        proc = subprocess.run([sys.executable, "-m", "ascend_ext.demo", "generate", spec_path, out_path],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"vLLM run failed (exit code {proc.returncode}):\n{proc.stderr[-6000:]}")
        with open(out_path) as f:
            result = json.load(f)
        result["warnings"] = [line for line in proc.stderr.splitlines()
                              if "WARNING" in line or "Traceback" in line or "Error" in line]
        return result


DEMO_PROMPTS = ["The plugin runs attention", "A tokenizer turns text into", "When the server starts it",
                "Questions and answers, stories and", "The cache grows by one block when",
                "Tokens are numbers;", "vLLM schedules the requests,", "Names such as Ascend,"]


def run_demo(*, batch: int, max_tokens: int, dtype: str, seed: int, compare: bool = True,
             enforce_eager: bool = False, print_fn=print) -> dict:
    """Build the demo model, generate with the plugin (and, if ``compare``, with vLLM's own
    backends), print what a person needs to see; return both results."""
    prompts = [DEMO_PROMPTS[i % len(DEMO_PROMPTS)] for i in range(batch)]
    results = {}
    with tempfile.TemporaryDirectory(prefix="ascend_ext_demo_") as model_dir:
        print_fn(f"building a tiny Llama with RANDOM weights ({dtype}) and a tokenizer trained on one "
                 f"paragraph in {model_dir}:")
        print_fn("  the text it writes is meaningless; it shows text in -> our kernels -> text out, and the speed.")
        build_tiny_llama(model_dir, seed=seed, dtype=dtype)
        spec = {"model": model_dir, "prompts": prompts, "max_tokens": max_tokens,
                "llm": {"dtype": dtype, "block_size": 32, "enforce_eager": enforce_eager}}
        sides = [("ascend_ext", False)] + ([("vLLM's own backends", True)] if compare else [])
        for name, disable in sides:
            print_fn(f"running vLLM with {name} (engine start includes graph compilation) ...")
            results[name] = generate_in_subprocess(spec, disable_plugin=disable)
    ours = results["ascend_ext"]
    print_fn(f"platform:          {ours['platform']}")
    print_fn(f"attention backend: {', '.join(ours['attention_backends'])}  ({ours['compilation_mode']})")
    for prompt, text in list(zip(prompts, ours["texts"]))[:3]:
        print_fn(f"  {prompt!r} -> {text[:80]!r}")
    print_fn(f"{batch} prompts x {max_tokens} new tokens, second of two identical generate calls:")
    for name, r in results.items():
        print_fn(f"  {name:22s} {r['tokens_per_s']:8.1f} tokens/s  ({r['generate_s']:.2f} s; engine start "
                 f"{r['engine_start_s']:.1f} s; backend {', '.join(r['attention_backends'])})")
    if compare:
        theirs = results["vLLM's own backends"]
        same = sum(a == b for a, b in zip(ours["texts"], theirs["texts"]))
        print_fn(f"  ratio ascend_ext / vLLM: {ours['tokens_per_s'] / max(theirs['tokens_per_s'], 1e-9):.2f}x; "
                 f"identical texts: {same}/{batch} ({dtype}: near-ties may round differently)")
        print_fn("  (one run each on a tiny model: see benchmarks/e2e_vllm.py for medians of alternated runs)")
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] != "generate":
        print("usage: python -m ascend_ext.demo generate SPEC.json OUT.json", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        spec = json.load(f)
    result = generate(spec)
    with open(argv[2], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
