// Intel AMX (Advanced Matrix Extensions) support of the native CPU kernels: whether the
// tile unit may be used by this process, and the one tile shape the kernels use.
//
// AMX is compiled in where the build targets it (-march=native on Sapphire Rapids and later:
// __AMX_TILE__ and __AMX_BF16__) and used only when, at run time, Linux grants the process
// the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, asked once per process) and
// ASCEND_EXT_NATIVE_AMX is not "0" (read per call: tests and benchmarks A/B both paths).
// The tiles of attention_tiles.h are 16 rows x 64 bytes (16 x 32 bfloat16 operands, 16 x 16
// float32 accumulators; configure() below); attention_amx_tiled.h loads its own configuration
// (A and C tiles of min(16, rows) rows). A thread loads a configuration before its first tile
// instruction of a work item and releases the tiles after its last one.
#pragma once

#include <cstdint>
#include <cstdlib>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#define ASCEND_EXT_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace ascend_ext {
namespace amx {

// Whether the kernels may use AMX now: built, granted by the kernel, not switched off.
inline bool usable() {
#if defined(ASCEND_EXT_AMX)
  static const bool granted = [] {
    constexpr long ARCH_REQ_XCOMP_PERM = 0x1023;
    constexpr long XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  }();
  if (!granted) return false;
  const char* env = std::getenv("ASCEND_EXT_NATIVE_AMX");
  return env == nullptr || env[0] != '0';
#else
  return false;
#endif
}

#if defined(ASCEND_EXT_AMX)
constexpr int ROWS = 16;        // rows of every tile
constexpr int ROW_BYTES = 64;   // bytes per tile row: 32 bfloat16 or 16 float32

// The 64-byte operand of ldtilecfg (palette 1): bytes per row and rows of each tile.
struct alignas(64) Config {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Loads the kernels' tile configuration (all eight tiles 16 x 64 bytes) into this thread.
inline void configure() {
  static const Config config = [] {
    Config c;
    for (int t = 0; t < 8; ++t) c.colsb[t] = ROW_BYTES, c.rows[t] = ROWS;
    return c;
  }();
  _tile_loadconfig(&config);
}

// Releases this thread's tile state (so context switches stop saving it).
inline void release() { _tile_release(); }
#endif

}  // namespace amx
}  // namespace ascend_ext
