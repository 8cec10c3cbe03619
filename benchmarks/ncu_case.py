"""One benchmark shape run a few times, for Nsight Compute (no timing of its own).

    ncu --clock-control none --set full -k regex:paged_attn_kernel --launch-skip 2 --launch-count 1 \
        python3 benchmarks/ncu_case.py paged_b1_16k

Cases (bf16, the shapes of attention.py / mla.py): paged decode 32 q / 8 kv heads, d128, block 16,
B = 1 at 4k and 16k keys; MLA decode latent 512 + 64, block 64, B = 32 at 4k keys with Hq 16 and
Hq 128 (s_q 1); causal prefill d128, 32 heads, 4 sequences of 4k. Each call runs ITERS times
(default 3), so --launch-skip picks a warm launch.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from attention import _paged_case  # noqa: E402
from mla import RANK, SCALE, _setup  # noqa: E402

from ascend_ext import ops  # noqa: E402


def paged(b: int, ctx: int):
    k_cache, v_cache, table, lens, q, cu, out = _paged_case(b, ctx, 32, 8, 128, 16)
    return lambda: ops.paged_attention(q, k_cache, v_cache, table, lens, cu, 1, out=out, max_seqlen_k=ctx)


def mla(b: int, ctx: int, hq: int):
    cache, table, lens, q = _setup(b, ctx, hq, 1)
    out = torch.empty(b, 1, hq, RANK, device="cuda", dtype=torch.bfloat16)
    return lambda: ops.mla_decode(q, cache, table, lens, kv_lora_rank=RANK, softmax_scale=SCALE, out=out)


def prefill(seqs: int, seq_len: int):
    q, k, v = (torch.randn(seqs * seq_len, 32, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    cu = torch.arange(0, seqs + 1, device="cuda", dtype=torch.int32) * seq_len
    return lambda: ops.flash_attn_varlen(q, k, v, cu, cu, seq_len, seq_len, causal=True)


CASES = {"paged_b1_4k": lambda: paged(1, 4096), "paged_b1_16k": lambda: paged(1, 16384),
         "mla_hq16_b32_4k": lambda: mla(32, 4096, 16), "mla_hq128_b32_4k": lambda: mla(32, 4096, 128),
         "prefill_d128_4k": lambda: prefill(4, 4096)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    with ops.use_impl(attention="triton", mla="triton"), ops.trusted_inputs():
        run = CASES[args.case]()
        for _ in range(args.iters):
            run()
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
