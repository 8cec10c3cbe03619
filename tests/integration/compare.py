"""Comparing greedy generations of two engines (vLLM's check_logprobs_close rule)."""


def _assert_within_top(i: int, pos: int, a: dict, b: dict, ta: int, tb: int) -> None:
    """Where two generations first differ, each engine's token must be among the other's
    top-k logprobs (a near-tie, not a wrong model)."""
    top_a, top_b = a["top_logprobs"][pos], b["top_logprobs"][pos]
    assert str(tb) in top_a and str(ta) in top_b, (
        f"prompt {i} position {pos}: tokens {ta} vs {tb} are not a near-tie "
        f"(ours top {top_a}, theirs top {top_b})")


def check_logprobs_close(ours: list[dict], theirs: list[dict], *, chosen_atol: float) -> int:
    """Per prompt: tokens must match until a first divergence; there, each engine's token
    must be among the other's top-k logprobs (a near-tie, not a wrong model); comparison
    of that prompt stops. Logprobs of matching tokens before it must agree within
    ``chosen_atol``. Returns the number of prompts that diverged."""
    diverged = 0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for pos, (ta, tb) in enumerate(zip(a["token_ids"], b["token_ids"])):
            if ta != tb:
                _assert_within_top(i, pos, a, b, ta, tb)
                diverged += 1
                break
            diff = abs(a["logprobs"][pos] - b["logprobs"][pos])
            assert diff <= chosen_atol, f"prompt {i} position {pos}: logprob differs by {diff}"
    return diverged


def assert_same_tokens(ours: list[dict], theirs: list[dict], *, chosen_atol: float) -> float:
    """Per prompt: identical greedy tokens, a non-degenerate output (more than three distinct
    tokens), chosen-token logprobs within ``chosen_atol``. Returns the largest difference."""
    worst = 0.0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a["token_ids"] == b["token_ids"], f"prompt {i}: {a['token_ids']} != {b['token_ids']}"
        assert len(set(a["token_ids"])) > 3, "degenerate model output proves nothing"
        worst = max(worst, max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"])))
    print(f"max |logprob difference| = {worst:.3g}")
    assert worst < chosen_atol, f"chosen-token logprobs differ by {worst}"
    return worst


def agreeing_prefixes(ours: list[dict], theirs: list[dict], *, chosen_atol: float) -> list[int]:
    """Per prompt: how many leading positions agree (same greedy token, chosen-token logprobs
    within ``chosen_atol``). Where they stop agreeing on the token, each engine's token must be
    among the other's top-k logprobs (a near-tie or a small-number flip, not a wrong model)."""
    lengths = []
    for i, (a, b) in enumerate(zip(ours, theirs)):
        n = 0
        for pos, (ta, tb) in enumerate(zip(a["token_ids"], b["token_ids"])):
            if ta != tb:
                _assert_within_top(i, pos, a, b, ta, tb)
                break
            if abs(a["logprobs"][pos] - b["logprobs"][pos]) > chosen_atol:
                break
            n += 1
        lengths.append(n)
    return lengths
