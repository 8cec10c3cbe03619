// Quantised paged KV caches for the native CPU attention: rows of a float8_e4m3fn cache
// (stored as bytes) or an int8 cache are dequantised on load into staging rows,
// x = (stored - offset) * scale per channel (ascend_ext.ops.attention.kv_quant: the scales
// arrive normalised to float32 [Hkv, D]; fp8 has no offset). Two forms (attention.cpp picks):
// float32 rows for the float32 kernels, or - bfloat16 queries, scales constant per KV head,
// integral offsets - the stored values minus offset as bfloat16 rows (exact) for the bfloat16
// kernels, with the scales applied to the scores and the outputs instead. Vector code from
// vec.h only, so the portable build takes the same path.
#pragma once

#include <cstdint>
#include <type_traits>
#include <cstring>

#include "row_source.h"
#include "vec.h"

namespace ascend_ext {
namespace kv_dequant {

using vec::f16x;
using vec::kLanes;
using vec::u16x;

typedef uint8_t u8x16 __attribute__((vector_size(16), aligned(1)));
typedef int8_t i8x16 __attribute__((vector_size(16), aligned(1)));

// Storage tag of a float8_e4m3fn cache (the bytes; no arithmetic type of its own).
struct E4M3 {
  uint8_t bits;
};

// 16 e4m3fn bytes -> float32, exactly: normals by moving exponent and mantissa into float32
// position and rebiasing (7 -> 127), subnormals as m * 2^-9 (no float32 denormals, so a
// flush-to-zero mode cannot change them), 0x7f / 0xff as NaN (e4m3fn has no infinity).
inline u16x widen_bytes(const void* p) {
#if defined(__AVX512F__)
  // one vpmovzxbd (GCC lowers the generic conversion to 16 scalar inserts)
  return reinterpret_cast<u16x>(_mm512_cvtepu8_epi32(_mm_loadu_si128(static_cast<const __m128i*>(p))));
#else
  u8x16 raw;
  std::memcpy(&raw, p, sizeof(raw));
  return __builtin_convertvector(raw, u16x);
#endif
}

inline f16x load16(const E4M3* p) {
  const u16x b = widen_bytes(p);
  const u16x magnitude = b & 0x7fu;
  const u16x normal = (magnitude << 20) + (120u << 23);
  const f16x subnormal = __builtin_convertvector(magnitude & 0x7u, f16x) * 0x1p-9f;
  u16x bits = (b & 0x78u) == 0u ? vec::as_bits(subnormal) : normal;
  bits = magnitude == 0x7fu ? u16x{} + 0x7fc00000u : bits;
  return vec::as_float(bits | ((b & 0x80u) << 24));
}

inline f16x load16(const int8_t* p) {
#if defined(__AVX512F__)
  return reinterpret_cast<f16x>(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))));
#else
  i8x16 raw;
  std::memcpy(&raw, p, sizeof(raw));
  return __builtin_convertvector(raw, f16x);
#endif
}

// Tail of a row (n < 16 elements): the remaining bytes copied into a zeroed vector first.
template <typename C>
inline f16x load16_tail(const C* p, int64_t n) {
  C padded[kLanes] = {};
  std::memcpy(padded, p, n * sizeof(C));
  return load16(padded);
}

// dst[0:dim) = (src - offset) * scale over one cache row, per channel (offset null = 0, scale
// null = 1), stored as float32 or rounded to bfloat16 (exact where the caller folds the scales
// out: e4m3 values and small integers are bfloat16 numbers).
template <typename C, typename O>
inline void dequantize_row(const C* src, const float* scale, const float* offset, int64_t dim, O* dst) {
  int64_t i = 0;
  for (; i + kLanes <= dim; i += kLanes) {
    f16x x = load16(src + i);
    if (offset != nullptr) x -= vec::load(offset + i);
    if (scale != nullptr) x *= vec::load(scale + i);
    vec::store_as(dst + i, x);
  }
  if (i < dim) {
    const f16x x = load16_tail(src + i, dim - i);
    for (int64_t c = 0; i + c < dim; ++c)
      dst[i + c] = static_cast<O>((x[c] - (offset != nullptr ? offset[i + c] : 0.f)) * (scale != nullptr ? scale[i + c] : 1.f));
  }
}

#if defined(__AVX512BW__)
// bfloat16 bits of the e4m3fn magnitudes 0..127 (0x7f: NaN), exactly: normals (m >= 8) are
// (m << 4) + (120 << 7), i.e. exponent and mantissa moved into place and rebiased 7 -> 127;
// subnormals m * 2^-9.
struct E4M3Table {
  alignas(64) uint16_t bits[128];
  constexpr E4M3Table() : bits{} {
    constexpr uint16_t subnormals[8] = {0x0000, 0x3b00, 0x3b80, 0x3bc0, 0x3c00, 0x3c20, 0x3c40, 0x3c60};
    for (int m = 0; m < 128; ++m)
      bits[m] = m < 8 ? subnormals[m] : m == 0x7f ? 0x7fc0 : static_cast<uint16_t>((m << 4) + (120 << 7));
  }
};
inline constexpr E4M3Table kE4M3Table{};

// 32 e4m3fn bytes -> 32 bfloat16 (every e4m3fn value is a bfloat16 number, so exactly), in
// 16-bit lanes: the magnitude looked up in the 128-entry table (two 64-entry permutes, picked
// by bit 6), then the sign. 7 instructions per 32 values (the arithmetic form took 11).
inline __m512i e4m3_to_bf16x32(const E4M3* p) {
  const __m512i b = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  const __m512i* t = reinterpret_cast<const __m512i*>(kE4M3Table.bits);
  const __m512i low = _mm512_permutex2var_epi16(_mm512_load_si512(t), b, _mm512_load_si512(t + 1));
  const __m512i high = _mm512_permutex2var_epi16(_mm512_load_si512(t + 2), b, _mm512_load_si512(t + 3));
  const __m512i magnitude = _mm512_mask_mov_epi16(low, _mm512_test_epi16_mask(b, _mm512_set1_epi16(0x40)), high);
  // sign: bit 7 of each byte moved to bit 15 (imm 0xf8 = A | (B & C))
  return _mm512_ternarylogic_epi32(magnitude, _mm512_slli_epi16(b, 8), _mm512_set1_epi16(static_cast<short>(0x8000)),
                                   0xf8);
}

// The folded form of an fp8 row (no scale, no offset): 32 lanes per step.
inline void dequantize_row(const E4M3* src, const float* scale, const float* offset, int64_t dim, c10::BFloat16* dst) {
  int64_t i = 0;
  if (scale == nullptr && offset == nullptr)
    for (; i + 32 <= dim; i += 32) _mm512_storeu_si512(dst + i, e4m3_to_bf16x32(src + i));
  if (i < dim) dequantize_row<E4M3, c10::BFloat16>(src + i, scale ? scale + i : nullptr, offset ? offset + i : nullptr,
                                                   dim - i, dst + i);
}
#endif

// Rows of one KV head of one sequence in a quantised paged cache, served as rows of O
// (float32, or bfloat16 when the caller folds the scales into the scores and outputs): each
// fill dequantises its rows into a staging buffer of at least n * dim elements (the caller's,
// per thread and per K / V), valid until the next fill.
template <typename C, typename Source, typename O>
struct DequantRows {
  using value_type = O;                   // the rows handed to the kernels
  static constexpr bool kStaged = true;   // fill() writes staging: prefetch through prefetch()
  Source source;          // row pointers into the cache (PagedRows<C>)
  const float* scale;     // [dim] of this head, or null (folded out)
  const float* offset;    // [dim] of this head, or null
  int64_t dim;
  O* staging;

  void fill(int64_t first, int64_t n, const O** out) const {
    row_source::each_row(source, first, n, [&](int64_t j, const C* stored) {
      O* row = staging + j * dim;
      dequantize_row(stored, scale, offset, dim, row);
      out[j] = row;
    });
  }

  // Software prefetch of the cache rows first .. first + n (the stored bytes, not staging).
  void prefetch(int64_t first, int64_t n) const {
    row_source::each_row(source, first, n, [&](int64_t, const C* stored) {
      vec::prefetch_lines(stored, dim * static_cast<int64_t>(sizeof(C)));
    });
  }
};

// Whether a row source's fill() writes staging rows (it then prefetches the stored rows through
// prefetch(first, n) instead of through the pointers fill() hands out).
template <typename R, typename = void>
struct is_staged : std::false_type {};
template <typename R>
struct is_staged<R, std::void_t<decltype(R::kStaged)>> : std::true_type {};

}  // namespace kv_dequant
}  // namespace ascend_ext
