"""Comparing greedy generations of two engines (vLLM's check_logprobs_close rule)."""


def check_logprobs_close(ours: list[dict], theirs: list[dict], *, chosen_atol: float) -> int:
    """Per prompt: tokens must match until a first divergence; there, each engine's token
    must be among the other's top-k logprobs (a near-tie, not a wrong model); comparison
    of that prompt stops. Logprobs of matching tokens before it must agree within
    ``chosen_atol``. Returns the number of prompts that diverged."""
    diverged = 0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for pos, (ta, tb) in enumerate(zip(a["token_ids"], b["token_ids"])):
            if ta != tb:
                top_a, top_b = a["top_logprobs"][pos], b["top_logprobs"][pos]
                assert str(tb) in top_a and str(ta) in top_b, (
                    f"prompt {i} position {pos}: tokens {ta} vs {tb} are not a near-tie "
                    f"(ours top {top_a}, theirs top {top_b})")
                diverged += 1
                break
            diff = abs(a["logprobs"][pos] - b["logprobs"][pos])
            assert diff <= chosen_atol, f"prompt {i} position {pos}: logprob differs by {diff}"
    return diverged
