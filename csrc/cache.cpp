// Native KV-cache writes of ascend_ext: torch.ops.ascend_ext_native.reshape_and_cache and
// concat_and_cache_mla (MLA latent rows).
//
// Token t (t < len(slot_mapping)) is copied into block slot // block_size, offset
// slot % block_size of both caches; slot < 0 is skipped (padding). Same dtype on both
// sides (the Python layer casts otherwise); caches [num_blocks, block_size, Hkv, D] with
// any strides and a contiguous head dim, as in the attention kernels.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <initializer_list>

#include "kv_tiles.h"
#include "ops_namespace.h"

namespace ascend_ext {
namespace {

// Calls row_fn(t, row, offset) in parallel for every token t < len(slot_mapping) whose slot is
// >= 0, row = the cache row (block slot // block_size, offset slot % block_size) as bytes.
template <typename RowFn>
void for_each_slot(const at::Tensor& slot_mapping, const at::Tensor& cache, RowFn row_fn) {
  TORCH_CHECK(slot_mapping.scalar_type() == at::kInt || slot_mapping.scalar_type() == at::kLong,
              "slot_mapping must be int32 or int64");
  const int64_t n = slot_mapping.numel(), block = cache.size(1), capacity = cache.size(0) * block;
  const int64_t elem = cache.element_size(), cb = cache.stride(0) * elem, ct = cache.stride(1) * elem;
  char* dst = static_cast<char*>(cache.data_ptr());
  auto walk = [&](const auto* slots) {
    for (int64_t t = 0; t < n; ++t)
      TORCH_CHECK(slots[t] < capacity, "slot_mapping[", t, "] = ", static_cast<int64_t>(slots[t]),
                  " is past the cache capacity ", capacity);
    at::parallel_for(0, n, 16, [&](int64_t first, int64_t last) {
      for (int64_t t = first; t < last; ++t) {
        const int64_t slot = slots[t];
        if (slot >= 0) row_fn(t, dst + (slot / block) * cb + (slot % block) * ct, slot % block);
      }
    });
  };
  if (slot_mapping.scalar_type() == at::kInt) walk(slot_mapping.data_ptr<int32_t>());
  else walk(slot_mapping.data_ptr<int64_t>());
}

// Token t's [Hkv, D] rows of src into the cache's [Hkv, D] slot rows.
void write_rows(const at::Tensor& src, at::Tensor& cache, const at::Tensor& slot_mapping) {
  const int64_t heads = src.size(1), elem = src.element_size(), row_bytes = src.size(2) * elem;
  const char* base = static_cast<const char*>(src.data_ptr());
  const int64_t st = src.stride(0) * elem, sh = src.stride(1) * elem, ch = cache.stride(2) * elem;
  for_each_slot(slot_mapping, cache, [&](int64_t t, char* row, int64_t) {
    for (int64_t h = 0; h < heads; ++h) std::memcpy(row + h * ch, base + t * st + h * sh, row_bytes);
  });
}

// value_layout "pairs" (16-bit values, even block size): token t at offset o of its block is
// element 2c + o % 2 of the pair that starts at slot o - o % 2, for each dim c; the pair's
// 2 D elements fill the rows of its two slots (ascend_ext/ops/attention/value_layout.py).
void write_pairs(const at::Tensor& src, at::Tensor& cache, const at::Tensor& slot_mapping) {
  TORCH_CHECK(src.element_size() == 2 && cache.size(1) % 2 == 0,
              "value_pairs: 16-bit values and an even block size");
  const int64_t heads = src.size(1), dim = src.size(2);
  const auto* base = static_cast<const uint16_t*>(src.data_ptr());
  const int64_t st = src.stride(0), sh = src.stride(1), ch = cache.stride(2), ct = cache.stride(1);
  for_each_slot(slot_mapping, cache, [&](int64_t t, char* row, int64_t offset) {
    const int64_t odd = offset % 2;
    uint16_t* first = reinterpret_cast<uint16_t*>(row) - odd * ct;   // slot o - o % 2
    for (int64_t h = 0; h < heads; ++h) {
      const uint16_t* v = base + t * st + h * sh;
      for (int64_t c = 0; c < dim; ++c) {
        const int64_t e = 2 * c + odd;
        first[h * ch + (e / dim) * ct + e % dim] = v[c];
      }
    }
  });
}

// kv_layout "tiles" (kv_tiles.h; caches checked by kv_tiles::check_caches): token t at offset o
// of its block is key o % 32 of the step region that starts at the K part of slot o - o % 32.
void write_tiles(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache, const at::Tensor& slot_mapping) {
  const int64_t heads = key.size(1), d = key.size(2), dv = value.size(2);
  const auto* k = static_cast<const uint16_t*>(key.data_ptr());
  const auto* v = static_cast<const uint16_t*>(value.data_ptr());
  const int64_t kt = key.stride(0), kh = key.stride(1), vt = value.stride(0), vh = value.stride(1);
  const int64_t ch = k_cache.stride(2), ct = k_cache.stride(1);
  for_each_slot(slot_mapping, k_cache, [&](int64_t t, char* row, int64_t offset) {
    uint16_t* step = reinterpret_cast<uint16_t*>(row) - offset % kv_tiles::STEP * ct;
    for (int64_t h = 0; h < heads; ++h) {
      kv_tiles::write_key(k + t * kt + h * kh, step + h * ch, d, offset % kv_tiles::STEP);
      kv_tiles::write_value(v + t * vt + h * vh, step + h * ch, d, dv, offset % kv_tiles::STEP);
    }
  });
}

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache, at::Tensor& v_cache,
                       const at::Tensor& slot_mapping, bool value_pairs, bool kv_tiles) {
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&key, &value, &k_cache, &v_cache}) {
    TORCH_CHECK(t->device().is_cpu(), "ascend_ext native reshape_and_cache: tensors must be on the CPU");
    TORCH_CHECK(t->stride(-1) == 1, "key, value and caches need a contiguous last (head) dim");
  }
  TORCH_CHECK(key.dim() == 3 && value.dim() == 3 && k_cache.dim() == 4 && v_cache.dim() == 4,
              "key/value must be [T, Hkv, D] and caches [num_blocks, block_size, Hkv, D]");
  TORCH_CHECK(key.scalar_type() == k_cache.scalar_type() && value.scalar_type() == v_cache.scalar_type(),
              "key/value must have their cache's dtype");
  TORCH_CHECK(key.size(1) == k_cache.size(2) && key.size(2) == k_cache.size(3) && value.size(1) == v_cache.size(2) &&
                  value.size(2) == v_cache.size(3) && value.size(0) == key.size(0),
              "key/value shapes do not match the caches");
  TORCH_CHECK(slot_mapping.dim() == 1 && slot_mapping.numel() <= key.size(0) && slot_mapping.is_contiguous(),
              "slot_mapping must be a contiguous [N] tensor with N <= tokens");
  if (kv_tiles) {
    TORCH_CHECK(!value_pairs, "kv_tiles (kv_layout 'tiles') and value_pairs (kv_layout 'pairs') exclude each other");
    kv_tiles::check_caches(k_cache, v_cache);
    return write_tiles(key, value, k_cache, slot_mapping);
  }
  write_rows(key, k_cache, slot_mapping);
  if (value_pairs) write_pairs(value, v_cache, slot_mapping);
  else write_rows(value, v_cache, slot_mapping);
}

// MLA latent cache write: cache[slot] = concat(kv_c[t], k_pe[t]) for t < len(slot_mapping),
// slot < 0 skipped. kv_c [T, rank], k_pe [T, rope] (any row strides, contiguous last dim)
// in the dtype of kv_cache [num_blocks, block_size, rank + rope] (contiguous last dim).
void concat_and_cache_mla(const at::Tensor& kv_c, const at::Tensor& k_pe, at::Tensor& kv_cache,
                          const at::Tensor& slot_mapping) {
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&kv_c, &k_pe, &kv_cache}) {
    TORCH_CHECK(t->device().is_cpu(), "ascend_ext native concat_and_cache_mla: tensors must be on the CPU");
    TORCH_CHECK(t->stride(-1) == 1, "kv_c, k_pe and kv_cache need a contiguous last dim");
    TORCH_CHECK(t->scalar_type() == kv_cache.scalar_type(), "kv_c and k_pe must have the cache's dtype");
  }
  TORCH_CHECK(kv_c.dim() == 2 && k_pe.dim() == 2 && kv_cache.dim() == 3 && k_pe.size(0) == kv_c.size(0) &&
                  kv_c.size(1) + k_pe.size(1) == kv_cache.size(2),
              "kv_c [T, rank], k_pe [T, rope] and kv_cache [num_blocks, block_size, rank + rope] expected");
  TORCH_CHECK(slot_mapping.dim() == 1 && slot_mapping.numel() <= kv_c.size(0) && slot_mapping.is_contiguous(),
              "slot_mapping must be a contiguous [N] tensor with N <= tokens");
  const int64_t elem = kv_cache.element_size(), rank_bytes = kv_c.size(1) * elem, rope_bytes = k_pe.size(1) * elem;
  const char* c = static_cast<const char*>(kv_c.data_ptr());
  const char* r = static_cast<const char*>(k_pe.data_ptr());
  const int64_t sc = kv_c.stride(0) * elem, sr = k_pe.stride(0) * elem;
  for_each_slot(slot_mapping, kv_cache, [&](int64_t t, char* row, int64_t) {
    std::memcpy(row, c + t * sc, rank_bytes);
    std::memcpy(row + rank_bytes, r + t * sr, rope_bytes);
  });
}

}  // namespace
}  // namespace ascend_ext

ASCEND_EXT_LIBRARY_FRAGMENT(ASCEND_EXT_OPS_NAMESPACE, m) {
  m.def("reshape_and_cache(Tensor key, Tensor value, Tensor(a!) k_cache, Tensor(b!) v_cache, "
        "Tensor slot_mapping, bool value_pairs=False, bool kv_tiles=False) -> ()");
  m.def("concat_and_cache_mla(Tensor kv_c, Tensor k_pe, Tensor(a!) kv_cache, Tensor slot_mapping) -> ()");
}

ASCEND_EXT_LIBRARY_IMPL(ASCEND_EXT_OPS_NAMESPACE, CPU, m) {
  m.impl("reshape_and_cache", &ascend_ext::reshape_and_cache);
  m.impl("concat_and_cache_mla", &ascend_ext::concat_and_cache_mla);
}
