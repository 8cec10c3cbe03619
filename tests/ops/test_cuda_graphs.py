"""The decode path captured in CUDA graphs (skipped without a GPU).

What vLLM's full-graph decode does with our backends, without vLLM: persistent
input buffers (queries, block table, sequence lengths, query offsets, caches),
one capture per batch size with the host scalars the backends pass at capture
(``max_seqlen_k`` = block-table capacity for paged attention; mla_decode needs
none), then replays after the buffers were rewritten in place with longer
sequences, new blocks and padding requests. Each replay must equal an eager call
with the same arguments bit for bit and match a float64 reference. The calls run
under ``trusted_inputs`` (as the backends call them) and with
``torch.cuda.set_sync_debug_mode("error")``: any host sync fails the test.
"""

import pytest
import torch

from ascend_ext import ops

from .naive import allowed, assert_close, attention_f64

pytestmark = pytest.mark.gpu
DEV = "cuda"
BATCHES = (1, 3, 8, 33)


class DecodeBuffers:
    """Persistent decode inputs for ``batch`` requests over a shared paged pool.

    ``refill`` writes new random contents into the same tensors: per request a length
    (0 = a padding request with no query), fresh keys in freshly permuted blocks, and
    NaN in every cache slot no request owns.
    """

    def __init__(self, batch, *, pool_blocks, block_size, width, token_shape, q_shape, dtype, gen):
        self.batch, self.block_size, self.width, self.dtype, self.gen = batch, block_size, width, dtype, gen
        self.cache = torch.full((pool_blocks, block_size, *token_shape), float("nan"), dtype=dtype, device=DEV)
        self.table = torch.zeros((batch, width), dtype=torch.int32, device=DEV)
        self.seq_lens = torch.zeros(batch, dtype=torch.int32, device=DEV)
        self.cu_q = torch.zeros(batch + 1, dtype=torch.int32, device=DEV)
        self.q = torch.zeros(q_shape, dtype=dtype, device=DEV)
        self.rows = []

    def refill(self, lengths, q_per_req):
        assert len(lengths) == self.batch and max(lengths) <= self.width * self.block_size
        self.cache.fill_(float("nan"))
        needed = [-(-n // self.block_size) for n in lengths]
        perm = torch.randperm(self.cache.shape[0], generator=self.gen)[:sum(needed)].tolist()
        table = torch.randint(0, self.cache.shape[0], (self.batch, self.width), generator=self.gen,
                              dtype=torch.int32)   # unused columns point anywhere (NaN blocks)
        self.rows, cursor = [], 0
        for b, n in enumerate(lengths):
            rows = torch.randn((n, *self.cache.shape[2:]), generator=self.gen).to(self.dtype)
            for j in range(needed[b]):
                table[b, j] = perm[cursor]
                part = rows[j * self.block_size:(j + 1) * self.block_size]
                self.cache[perm[cursor], :part.shape[0]] = part.to(DEV)
                cursor += 1
            self.rows.append(rows.to(DEV))
        q_lens = [q_per_req if n > 0 else 0 for n in lengths]
        offsets = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0).to(torch.int32)
        self.table.copy_(table.to(DEV))
        self.seq_lens.copy_(torch.tensor(lengths, dtype=torch.int32, device=DEV))
        self.cu_q.copy_(offsets.to(DEV))
        self.q.copy_(torch.randn(self.q.shape, generator=self.gen).to(self.dtype).to(DEV))
        return q_lens


def _capture(fn):
    """Warm up (compiles the Triton kernels) on a side stream, then capture ``fn``."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def _no_sync(fn):
    torch.cuda.set_sync_debug_mode("error")
    try:
        with ops.trusted_inputs():
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _rounds(batch, gen, max_len):
    """Lengths per replay: short, then longer (past anything seen at capture) with a padding
    request, then a mix including the block table's full capacity."""
    short = torch.randint(1, 40, (batch,), generator=gen).tolist()
    longer = torch.randint(max_len // 4, max_len // 2, (batch,), generator=gen).tolist()
    if batch > 1:
        longer[-1] = 0
    mixed = torch.randint(1, max_len, (batch,), generator=gen).tolist()
    mixed[0] = max_len
    return [short, longer, mixed]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("hq,hkv,d,q_per_req", [(32, 8, 128, 1), (16, 2, 64, 2)])
def test_paged_attention_decode_graph_replays_match_eager(batch, hq, hkv, d, q_per_req, rng):
    dtype, block_size, width = torch.bfloat16, 16, 96
    max_keys = width * block_size        # what the backend passes at capture (block-table capacity)
    tokens = batch * q_per_req
    buf = DecodeBuffers(batch, pool_blocks=batch * width + 8, block_size=block_size, width=width,
                        token_shape=(hkv, 2 * d), q_shape=(tokens, hq, d), dtype=dtype, gen=rng)
    k_cache, v_cache = buf.cache.split(d, dim=-1)
    out = torch.full((tokens, hq, d), float("nan"), dtype=dtype, device=DEV)

    def step(dest=out):
        with ops.use_impl(attention="triton"):
            ops.paged_attention(buf.q, k_cache, v_cache, buf.table, buf.seq_lens, buf.cu_q, q_per_req,
                                out=dest, max_seqlen_k=max_keys)

    buf.refill([max(q_per_req, n) for n in torch.randint(1, 20, (batch,), generator=rng).tolist()], q_per_req)
    with ops.trusted_inputs():
        graph = _capture(step)
    for lengths in _rounds(batch, rng, max_keys):
        lengths = [max(n, q_per_req) if n else 0 for n in lengths]   # a sequence holds its new tokens
        q_lens = buf.refill(lengths, q_per_req)
        out.fill_(float("nan"))
        graph.replay()
        eager = torch.full_like(out, float("nan"))
        _no_sync(lambda: step(eager))
        torch.cuda.synchronize()
        q0 = 0
        for b, (n, lq) in enumerate(zip(lengths, q_lens)):
            if lq == 0:
                continue
            got = out[q0:q0 + lq]
            assert torch.equal(got, eager[q0:q0 + lq]), f"request {b}: replay differs from eager"
            keys = buf.rows[b]
            ref, _ = attention_f64(buf.q[q0:q0 + lq], keys[..., :d], keys[..., d:], d ** -0.5,
                                   allowed(lq, n, True, (-1, -1), device=DEV))
            assert_close(got, ref, dtype, what=f"request {b} (length {n})")
            q0 += lq


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("hq,s_q", [(16, 1), (128, 1), (16, 2)])
def test_mla_decode_graph_replays_match_eager(batch, hq, s_q, rng):
    dtype, rank, rope, block_size, width = torch.bfloat16, 512, 64, 64, 40
    max_keys = width * block_size
    scale = (128 + 64) ** -0.5
    buf = DecodeBuffers(batch, pool_blocks=batch * width + 8, block_size=block_size, width=width,
                        token_shape=(rank + rope,), q_shape=(batch, s_q, hq, rank + rope), dtype=dtype, gen=rng)
    out = torch.full((batch, s_q, hq, rank), float("nan"), dtype=dtype, device=DEV)

    def step(dest=out):
        with ops.use_impl(mla="triton"):
            ops.mla_decode(buf.q, buf.cache, buf.table, buf.seq_lens, kv_lora_rank=rank,
                           softmax_scale=scale, out=dest)

    buf.refill([max(s_q, n) for n in torch.randint(1, 20, (batch,), generator=rng).tolist()], s_q)
    with ops.trusted_inputs():
        graph = _capture(step)
    for lengths in _rounds(batch, rng, max_keys):
        lengths = [max(n, s_q) if n else 0 for n in lengths]   # a sequence holds its s_q new tokens
        buf.refill(lengths, s_q)
        out.fill_(float("nan"))
        graph.replay()
        eager = torch.full_like(out, float("nan"))
        _no_sync(lambda: step(eager))
        torch.cuda.synchronize()
        for b, n in enumerate(lengths):
            if n == 0:   # empty sequence: defined output 0 (mla_decode's contract), same in both
                assert torch.equal(out[b], eager[b]) and not out[b].isnan().any()
                continue
            assert torch.equal(out[b], eager[b]), f"request {b}: replay differs from eager"
            latent = buf.rows[b]
            ref, _ = attention_f64(buf.q[b], latent[:, None, :], latent[:, None, :rank], scale,
                                   allowed(s_q, n, True, (-1, -1), device=DEV))
            assert_close(out[b], ref, dtype, what=f"request {b} (length {n})")
