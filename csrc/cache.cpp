// Native KV-cache write of ascend_ext: torch.ops.ascend_ext_native.reshape_and_cache.
//
// Token t (t < len(slot_mapping)) is copied into block slot // block_size, offset
// slot % block_size of both caches; slot < 0 is skipped (padding). Same dtype on both
// sides (the Python layer casts otherwise); caches [num_blocks, block_size, Hkv, D] with
// any strides and a contiguous head dim, as in the attention kernels.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <initializer_list>

#include "ops_namespace.h"

namespace ascend_ext {
namespace {

template <typename Slot>
void write_rows(const at::Tensor& src, at::Tensor& cache, const Slot* slots, int64_t n) {
  const int64_t heads = src.size(1), row_bytes = src.size(2) * src.element_size();
  const int64_t block = cache.size(1), capacity = cache.size(0) * block;
  const char* base = static_cast<const char*>(src.data_ptr());
  char* dst = static_cast<char*>(cache.data_ptr());
  const int64_t elem = src.element_size();
  const int64_t st = src.stride(0) * elem, sh = src.stride(1) * elem;
  const int64_t cb = cache.stride(0) * elem, ct = cache.stride(1) * elem, ch = cache.stride(2) * elem;
  for (int64_t t = 0; t < n; ++t)
    TORCH_CHECK(slots[t] < capacity, "slot_mapping[", t, "] = ", static_cast<int64_t>(slots[t]),
                " is past the cache capacity ", capacity);
  at::parallel_for(0, n, 16, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0) continue;
      char* row = dst + (slot / block) * cb + (slot % block) * ct;
      for (int64_t h = 0; h < heads; ++h) std::memcpy(row + h * ch, base + t * st + h * sh, row_bytes);
    }
  });
}

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache, at::Tensor& v_cache,
                       const at::Tensor& slot_mapping) {
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
  const int64_t n = slot_mapping.numel();
  if (slot_mapping.scalar_type() == at::kInt) {
    write_rows(key, k_cache, slot_mapping.data_ptr<int32_t>(), n);
    write_rows(value, v_cache, slot_mapping.data_ptr<int32_t>(), n);
  } else {
    TORCH_CHECK(slot_mapping.scalar_type() == at::kLong, "slot_mapping must be int32 or int64");
    write_rows(key, k_cache, slot_mapping.data_ptr<int64_t>(), n);
    write_rows(value, v_cache, slot_mapping.data_ptr<int64_t>(), n);
  }
}

}  // namespace
}  // namespace ascend_ext

ASCEND_EXT_LIBRARY_FRAGMENT(ASCEND_EXT_OPS_NAMESPACE, m) {
  m.def("reshape_and_cache(Tensor key, Tensor value, Tensor(a!) k_cache, Tensor(b!) v_cache, "
        "Tensor slot_mapping) -> ()");
}

ASCEND_EXT_LIBRARY_IMPL(ASCEND_EXT_OPS_NAMESPACE, CPU, m) {
  m.impl("reshape_and_cache", &ascend_ext::reshape_and_cache);
}
