"""Tiny Triton kernels that expose a shared kernel helper's results to the tests."""

import triton
import triton.language as tl

from ascend_ext.kernels.triton.common import split_keys


@triton.jit
def split_key_ranges(OUT, k_len, num_splits, BLOCK_N: tl.constexpr):
    """OUT[split] = (begin, end) of split_keys for every split (grid: num_splits)."""
    split = tl.program_id(0)
    begin, end = split_keys(split, num_splits, k_len, BLOCK_N)
    tl.store(OUT + 2 * split, begin)
    tl.store(OUT + 2 * split + 1, end)
