// Portable variant: 4 independent lanes in plain C++, built for the platform's default target.
#include <cstring>

#include "simd_kernels.hpp"

namespace sealvec::simd_scalar {

struct Ops {
  struct Vec {
    float lane[4];
  };
  static constexpr std::size_t kWidth = 4;
  // Same register budget as AVX2 (16 SSE registers on x86-64).
  static constexpr int kQueryGroup = 4;
  static constexpr bool kHasReduce4x4 = false;  // see the AVX-512 variant
  static inline void reduce_4x4(const Vec*, float*, std::size_t, int) {}
  static constexpr int rows_for(int queries, bool norms) {
    return queries >= 4 ? 3 : queries == 3 ? (norms ? 2 : 3) : queries == 2 ? (norms ? 3 : 4)
                                                                             : 4;
  }

  static inline Vec zero() { return Vec{{0.0f, 0.0f, 0.0f, 0.0f}}; }
  static inline Vec load(const float* p) {
    Vec v;
    std::memcpy(v.lane, p, sizeof(v.lane));
    return v;
  }
  static inline Vec load_partial(const float* p, std::size_t n) {
    Vec v = zero();
    std::memcpy(v.lane, p, n * sizeof(float));
    return v;
  }
  static inline Vec fmadd(Vec a, Vec b, Vec acc) {
    for (int i = 0; i < 4; ++i) acc.lane[i] += a.lane[i] * b.lane[i];
    return acc;
  }
  static inline Vec sub(Vec a, Vec b) {
    for (int i = 0; i < 4; ++i) a.lane[i] -= b.lane[i];
    return a;
  }
  static inline float reduce(Vec v) { return (v.lane[0] + v.lane[2]) + (v.lane[1] + v.lane[3]); }
};

#include "simd_block_impl.inc"

}  // namespace sealvec::simd_scalar
