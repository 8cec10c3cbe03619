"""``ascend-ext demo``: the locally trained tokenizer, and the demo itself end to end."""

import string

import pytest

from ascend_ext import demo

from .integration.vllm_runner import needs_vllm


def test_tokenizer_has_the_model_vocab_and_prints_every_id(tmp_path):
    from transformers import AutoTokenizer

    demo.build_tokenizer(str(tmp_path), vocab_size=512)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tok) == 512 and (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    text = "The cache grows by one block: 2048 tokens/s on CPUs?"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    printable = set(string.printable)
    for i in range(3, 512):
        assert set(tok.decode([i])) <= printable, f"id {i} decodes to {tok.decode([i])!r}"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<s>user: hi\n<s>assistant:"


@pytest.mark.e2e
@needs_vllm
def test_demo_prints_text_and_both_speeds_without_warnings_from_our_setup():
    lines = []
    results = demo.run_demo(batch=2, max_tokens=8, dtype="bfloat16", seed=0, print_fn=lines.append)
    output = "\n".join(lines)
    print(output)
    assert "RANDOM weights" in output
    ours, theirs = results["ascend_ext"], results["vLLM's own backends"]
    assert ours["attention_backends"] == ["ASCEND_EXT"] and theirs["attention_backends"] == ["CPU_ATTN"]
    assert ours["compilation_mode"] != "NONE"
    assert all(text.strip() for text in ours["texts"]) and ours["tokens_per_s"] > 0 and theirs["tokens_per_s"] > 0
    assert "tokens/s" in output and "ratio ascend_ext / vLLM" in output
    for result in (ours, theirs):
        bad = [w for w in result["warnings"] if "Traceback" in w or "Casting" in w or "dtype" in w.lower()]
        assert not bad, bad
