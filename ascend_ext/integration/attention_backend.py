"""vLLM attention backend "ASCEND_EXT": adapts vLLM metadata and calls ascend_ext.ops.

Every step goes through two ops: ``reshape_and_cache`` writes the step's new K/V
into the paged cache, then ``paged_attention`` attends each request's new queries
over its whole cached context (prefill, chunked prefill, prefix-cache hits and
decode alike). The KV cache is vLLM's combined tensor; :func:`split_kv_cache`
gives the op-layout views without copying.

CUDA graphs: the builder declares ``UNIFORM_BATCH`` (full graphs for batches whose
requests all have the same query length: decode, speculative verification; mixed
batches run piecewise, attention eagerly). Its metadata references persistent
buffers only (vLLM's runner tensors, or the builder's own int32 copies), and the
forward path launches kernels without reading device values on the host. A
captured graph keeps the host scalars it was captured with, so capture metadata
sets ``max_seq_len=None``: "bounded by the block table's capacity", which every
later replay satisfies however long its sequences have grown.

Attention sinks (gpt-oss): the layer's ``sinks`` parameter goes to every call as float32
(converted once per weight update). Cascade attention: vLLM 0.32 no longer detects
shared prefixes (``common_prefix_len`` is always 0), so the first layer of an eager step
looks at the block table itself (:func:`~ascend_ext.ops.shared_prefix_blocks`, one host
read, skipped when the batch is too small to pay) and, where ``cascade_pays``, every layer
of the step runs :func:`~ascend_ext.ops.cascade_attention`. ``auto`` (the default) plans on
CPU only, where the read is free; on accelerators it would be a device sync every eager
step, so there only ``ASCEND_EXT_CASCADE=always`` (any shared block; tests, benchmarks)
turns it on. ``off`` disables it. Graph replays never see it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from vllm.v1.attention.backend import (AttentionBackend, AttentionCGSupport, AttentionImpl,
                                       AttentionMetadataBuilder, AttentionType, CommonAttentionMetadata,
                                       MultipleOf)
from vllm.v1.kv_cache_layout import KVCacheLayout

from .. import ops
from . import FLOAT_KV_CACHE_DTYPES, QUANT_KV_CACHE_DTYPES, attention_backend_name, trace


class AscendExtAttentionBackend(AttentionBackend):
    forward_includes_kv_cache_update: bool = False
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list] = [*FLOAT_KV_CACHE_DTYPES[:3], *QUANT_KV_CACHE_DTYPES]
    """fp8 / fp8_e4m3: vLLM's per-tensor (or per-head) scaled e4m3 cache; int8: vllm-ascend's C8
    cache. Not fp8_e5m2, fp8_inc, *_per_token_head, nvfp4 or turboquant (vLLM's backends serve those)."""

    @staticmethod
    def get_name() -> str:
        return attention_backend_name()

    @staticmethod
    def get_impl_cls() -> type[AscendExtAttentionImpl]:
        return AscendExtAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[AscendExtMetadataBuilder]:
        return AscendExtMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list:
        return [MultipleOf(16)]

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_per_head_quant_scales(cls) -> bool:
        return True   # fp8 k_scale / v_scale per KV head (vLLM's "attn_head" kv-cache scheme)

    @classmethod
    def supports_non_causal(cls) -> bool:
        return True

    @classmethod
    def supports_sink(cls) -> bool:
        return True   # the bound paged_attention implementation is checked at selection (selection.py)

    @classmethod
    def supported_kv_cache_layouts(cls) -> tuple[KVCacheLayout, ...]:
        # The ops take any strides with a contiguous head dim. On CPU the native kernels
        # stream one head's keys per block: head-major keeps them contiguous (measured
        # 1.3-1.5x faster decode than token-major, benchmarks/NOTES.md).
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            return (KVCacheLayout.LBHNC, KVCacheLayout.LBNHC)
        return (KVCacheLayout.LBNHC, KVCacheLayout.LBHNC)


@dataclass
class AscendExtAttentionMetadata:
    num_actual_tokens: int
    max_query_len: int
    max_seq_len: int | None          # None: bounded by block_table capacity (CUDA-graph capture)
    query_start_loc: torch.Tensor   # int32 [B+1]
    seq_lens: torch.Tensor          # int32 [B]
    block_table: torch.Tensor       # int32 [B, max_blocks]
    slot_mapping: torch.Tensor      # [num_actual_tokens]
    causal: bool
    block_size: int = 0             # KV-cache block size (cascade planning)
    cascade_mode: str = "off"       # "auto" | "always" | "off" (ASCEND_EXT_CASCADE)
    cascade: ops.CascadePlan | None = field(default=None, repr=False)
    cascade_planned: bool = False   # planned lazily by the first layer that runs eagerly


CASCADE_MODES = ("auto", "always", "off")


def cascade_mode() -> str:
    mode = os.environ.get("ASCEND_EXT_CASCADE", "auto").strip().lower() or "auto"
    if mode not in CASCADE_MODES:
        raise ValueError(f"ASCEND_EXT_CASCADE must be one of {', '.join(CASCADE_MODES)}, got {mode!r}")
    return mode


def cascade_plan(md: AscendExtAttentionMetadata) -> ops.CascadePlan | None:
    """The step's cascade plan, decided once per metadata (so once per step for all layers):
    none for graph captures, non-causal steps or batches too small to pay, else the shared
    prefix of the block table when ``ops.cascade_pays`` (or any, with mode "always")."""
    if md.cascade_planned:
        return md.cascade
    md.cascade_planned = True
    batch = md.seq_lens.shape[0]
    always = md.cascade_mode == "always"
    if not always and md.block_table.device.type != "cpu":   # auto: finding the prefix would sync the device
        return None
    if md.cascade_mode == "off" or not md.causal or md.max_seq_len is None or md.block_size <= 0 or not always and (
            not ops.cascade_pays(batch, md.max_seq_len)):   # host-side bounds first: no device read
        return None
    blocks = ops.shared_prefix_blocks(md.block_table, md.seq_lens, md.query_start_loc, md.block_size,
                                      md.max_seq_len)
    if blocks and (always or ops.cascade_pays(batch, blocks * md.block_size)):
        md.cascade = ops.plan_cascade(md.block_table, md.seq_lens, md.query_start_loc, md.num_actual_tokens,
                                      md.block_size, blocks)
    return md.cascade


class AscendExtMetadataBuilder(AttentionMetadataBuilder[AscendExtAttentionMetadata]):
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_BATCH

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        max_reqs = vllm_config.scheduler_config.max_num_seqs
        # int32 copies for runners that hand in other index dtypes (vLLM's are int32:
        # then its persistent tensors are used directly)
        self._query_start_loc = torch.zeros(max_reqs + 1, dtype=torch.int32, device=device)
        self._seq_lens = torch.zeros(max_reqs, dtype=torch.int32, device=device)
        self._block_size = int(getattr(kv_cache_spec, "block_size", 0) or 0)
        self._cascade_mode = cascade_mode()

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> AscendExtAttentionMetadata:
        m = common_attn_metadata
        if isinstance(m.causal, torch.Tensor):
            raise NotImplementedError("ascend_ext attention does not support per-request causal flags")
        return AscendExtAttentionMetadata(
            num_actual_tokens=m.num_actual_tokens,
            max_query_len=m.max_query_len,
            max_seq_len=m.max_seq_len,
            query_start_loc=_int32(m.query_start_loc, self._query_start_loc),
            seq_lens=_int32(m.seq_lens, self._seq_lens),
            block_table=_int32(m.block_table_tensor, None),
            slot_mapping=m.slot_mapping,
            causal=bool(m.causal),
            block_size=self._block_size,
            cascade_mode=self._cascade_mode,
        )

    def build_for_cudagraph_capture(self, common_attn_metadata: CommonAttentionMetadata
                                    ) -> AscendExtAttentionMetadata:
        metadata = self.build(0, common_attn_metadata)
        metadata.max_seq_len = None   # replays see longer sequences than the capture did
        return metadata


def _int32(src: torch.Tensor, persistent: torch.Tensor | None) -> torch.Tensor:
    """``src`` itself when int32 (a persistent runner buffer), else its values copied into
    the front of ``persistent`` (so captured graphs keep reading the same memory)."""
    if src.dtype == torch.int32:
        return src
    if persistent is None or src.dim() != 1 or src.shape[0] > persistent.shape[0]:
        raise TypeError(f"ascend_ext attention expects int32 metadata, got {src.dtype} {tuple(src.shape)}")
    view = persistent[:src.shape[0]]
    view.copy_(src, non_blocking=True)
    return view


class AscendExtAttentionImpl(AttentionImpl[AscendExtAttentionMetadata]):
    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int | None = None,
                 alibi_slopes: list[float] | None = None, sliding_window: int | None = None,
                 kv_cache_dtype: str = "auto", logits_soft_cap: float | None = None,
                 attn_type: str = AttentionType.DECODER,
                 kv_sharing_target_layer_name: str | None = None, sinks: torch.Tensor | None = None,
                 **unsupported) -> None:
        if alibi_slopes is not None:
            raise NotImplementedError("ascend_ext attention does not support ALiBi; set ASCEND_EXT_DISABLE=1")
        if attn_type != AttentionType.DECODER:
            raise NotImplementedError(f"ascend_ext attention serves decoder layers only, got {attn_type}")
        if any(v is not None for v in unsupported.values()):
            raise NotImplementedError(f"ascend_ext attention does not support {sorted(unsupported)}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        if kv_cache_dtype not in FLOAT_KV_CACHE_DTYPES and kv_cache_dtype not in QUANT_KV_CACHE_DTYPES:
            raise NotImplementedError(f"ascend_ext attention does not support kv_cache_dtype {kv_cache_dtype!r} "
                                      f"(supported: {', '.join(AscendExtAttentionBackend.supported_kv_cache_dtypes)})")
        self.kv_cache_dtype = kv_cache_dtype
        self.kv_quant = QUANT_KV_CACHE_DTYPES.get(kv_cache_dtype)   # None, "fp8" or "int8"
        self._scales: dict | None = None                               # the layer's scale tensors, once read
        self._layout: dict | None = None   # kv_layout of the layer's float cache, decided once (its whole life)
        self.softcap = float(logits_soft_cap or 0.0)
        # vLLM's sliding_window W = the token itself and the W - 1 before it
        self.window_size = (sliding_window - 1, 0) if sliding_window else (-1, -1)
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        if sinks is not None and tuple(sinks.shape) != (num_heads,):
            raise ValueError(f"ascend_ext attention: sinks must have one logit per query head ({num_heads}), "
                             f"got shape {tuple(sinks.shape)}")
        self.sinks = sinks                      # the layer's parameter (its values arrive with the weights)
        self._sinks32: torch.Tensor | None = None
        self._sinks_version = -1

    def _float_sinks(self) -> torch.Tensor | None:
        """The sinks as float32 (the ops' contract), re-converted only when the parameter changed
        (weight loading writes it in place, which bumps its version counter)."""
        if self.sinks is None:
            return None
        if self.sinks.dtype == torch.float32:
            return self.sinks
        if self._sinks32 is None or self._sinks_version != self.sinks._version:
            self._sinks32 = self.sinks.detach().float()
            self._sinks_version = self.sinks._version
        return self._sinks32

    def _caches(self, layer, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(k_cache, v_cache) op views of vLLM's combined cache and the cache arguments of every
        op that reads or writes it: the scales of a quantised cache, else its layout (kv_layout)."""
        if self.kv_quant is None:
            k_cache, v_cache = ops.split_kv_cache(kv_cache, self.head_size)
            if self._layout is None:   # "tiles" / "pairs" where the native CPU kernels write and read it
                self._layout = dict(kv_layout=ops.preferred_kv_layout(k_cache, v_cache))
                trace.note(f"kv_layout={self._layout['kv_layout']}")
            return k_cache, v_cache, self._layout
        if self.kv_quant == "fp8" and kv_cache.dtype == torch.uint8:   # vLLM allocates fp8 caches as uint8
            kv_cache = kv_cache.view(torch.float8_e4m3fn)
        k_cache, v_cache = ops.split_kv_cache(kv_cache, self.head_size)
        if self._scales is None:   # the tensors themselves (vLLM updates their values in place)
            self._scales = kv_cache_scales(layer, self.kv_quant, self.num_kv_heads, self.head_size)
        return k_cache, v_cache, self._scales

    def do_kv_cache_update(self, layer, key: torch.Tensor, value: torch.Tensor,
                           kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        k_cache, v_cache, scales = self._caches(layer, kv_cache)
        with ops.trusted_inputs():
            ops.reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, **scales)

    def forward(self, layer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: AscendExtAttentionMetadata | None,
                output: torch.Tensor, output_scale=None, output_block_scale=None) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("ascend_ext attention does not fuse output quantization")
        if attn_metadata is None:  # profiling run
            return output
        trace.note("attention")
        if trace.enabled():
            trace.note(f"impl paged_attention={ops.selected_impl('paged_attention', query.device.type)}")
        n = attn_metadata.num_actual_tokens
        k_cache, v_cache, scales = self._caches(layer, kv_cache)
        max_seq_len = attn_metadata.max_seq_len
        if max_seq_len is None:   # CUDA-graph capture: the most keys any replay can have
            max_seq_len = attn_metadata.block_table.shape[1] * k_cache.shape[1]
        sinks = self._float_sinks()
        with ops.trusted_inputs():
            plan = cascade_plan(attn_metadata) if self.window_size == (-1, -1) else None
            if plan is not None:
                trace.note("cascade")
                ops.cascade_attention(
                    query[:n], k_cache, v_cache, plan, attn_metadata.query_start_loc, attn_metadata.max_query_len,
                    softmax_scale=self.scale, softcap=self.softcap, out=output[:n], max_seqlen_k=max_seq_len,
                    sinks=sinks, **scales)
                return output
            ops.paged_attention(
                query[:n], k_cache, v_cache, attn_metadata.block_table, attn_metadata.seq_lens,
                attn_metadata.query_start_loc, attn_metadata.max_query_len,
                softmax_scale=self.scale, causal=attn_metadata.causal, window_size=self.window_size,
                softcap=self.softcap, out=output[:n], max_seqlen_k=max_seq_len, sinks=sinks, **scales)
        return output


def kv_cache_scales(layer, kind: str, num_kv_heads: int, head_size: int) -> dict:
    """The scale tensors of a quantised cache as the layer holds them (in place: vLLM may update
    the values): fp8 - vLLM's ``_k_scale`` / ``_v_scale`` (per tensor, or per head for
    ``attn_head`` checkpoints); int8 - vllm-ascend's C8 ``k_cache_scale`` / ``k_cache_offset`` /
    ``v_cache_scale`` / ``v_cache_offset`` (one value or per channel over all KV heads: this
    tensor-parallel rank's heads are selected, as vllm-ascend does)."""
    if kind == "fp8":
        return dict(k_scale=layer._k_scale, v_scale=layer._v_scale)
    names = ("k_cache_scale", "v_cache_scale", "k_cache_offset", "v_cache_offset")
    missing = [name for name in names if not isinstance(getattr(layer, name, None), torch.Tensor)]
    if missing:
        raise NotImplementedError(
            f"kv_cache_dtype int8 needs the static C8 KV-cache scales of a vllm-ascend (modelslim C8) checkpoint; "
            f"layer {getattr(layer, 'layer_name', '?')} has no {', '.join(missing)}")
    local = num_kv_heads * head_size
    return {arg: _rank_channels(getattr(layer, name), local, head_size)
            for arg, name in zip(("k_scale", "v_scale", "k_offset", "v_offset"), names)}


def _rank_channels(t: torch.Tensor, local: int, head_size: int) -> torch.Tensor:
    t = t.detach().reshape(-1)
    if t.numel() in (1, local):
        return t
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    heads, rank, world = t.numel() // head_size, get_tensor_model_parallel_rank(), \
        get_tensor_model_parallel_world_size()
    first = rank * heads // world
    return t.view(heads, head_size)[first:first + local // head_size].reshape(-1)
