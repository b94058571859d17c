// Portable variant: 4 independent lanes in plain C++, built for the platform's default target.
#include <cstdint>
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

// bfloat16 widened to float32 (the bits shifted up by 16), four independent lanes.
struct Bf16Ops {
  using Acc = Ops::Vec;
  using Raw = Ops::Vec;
  static constexpr std::size_t kStep = 4;
  static constexpr int kQueryGroup = 4;
  static constexpr int kRowGroup = 3;
  static constexpr int kStreamRows = 4;
  static inline Acc zero() { return Ops::zero(); }
  static inline float widen(std::uint16_t bits) {
    const std::uint32_t wide = static_cast<std::uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &wide, sizeof(value));
    return value;
  }
  static inline Raw load_partial(const std::uint16_t* p, std::size_t n) {
    Raw v = zero();
    for (std::size_t i = 0; i < n; ++i) v.lane[i] = widen(p[i]);
    return v;
  }
  static inline Raw load(const std::uint16_t* p) { return load_partial(p, 4); }
  static inline Acc dot(Raw a, Raw b, Acc acc) { return Ops::fmadd(a, b, acc); }
  static inline float reduce(Acc v) { return Ops::reduce(v); }
};

#include "simd_bf16_impl.inc"

}  // namespace sealvec::simd_scalar
