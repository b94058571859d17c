// Exact top-k search over float32 row segments, independent of Python.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "simd_kernels.hpp"

namespace sealvec {

enum class SimdLevel { Scalar, Avx2, Avx512 };

const char* simd_level_name(SimdLevel level);
// Parses "scalar" / "avx2" / "avx512"; returns false for anything else.
bool parse_simd_level(const std::string& name, SimdLevel* level);
// Levels this CPU (and OS) can run, in ascending order; always contains Scalar.
std::vector<SimdLevel> supported_simd_levels();
SimdLevel best_supported_simd_level();
bool simd_level_supported(SimdLevel level);
SimdLevel active_simd_level();
// Caller must have checked simd_level_supported(level).
void set_active_simd_level(SimdLevel level);

struct RowSegment {
  const float* rows;      // row-major, `dim` columns, may be unaligned
  std::size_t row_count;  // may be 0
};

struct SearchRequest {
  std::vector<RowSegment> segments;  // global row = concatenation order
  std::size_t dim = 0;
  const float* queries = nullptr;    // query_count x dim, row-major
  std::size_t query_count = 0;
  std::size_t k = 0;
  Metric metric = Metric::InnerProduct;
  const std::uint8_t* mask = nullptr;        // total_rows bytes or null (all rows allowed)
  const unsigned char* tiebreak = nullptr;   // total_rows native int64 or null (row index)
  std::size_t threads = 1;                   // already resolved, >= 1
};

std::size_t total_rows(const SearchRequest& request);
// Number of rows the mask allows (all rows when there is no mask).
std::size_t allowed_rows(const SearchRequest& request);

// Fills scores[q * kept + i] and rows[q * kept + i], best first, where
// kept = min(k, allowed_rows(request)). Deterministic for any thread count.
void run_search(const SearchRequest& request, std::size_t kept, float* scores,
                std::int64_t* rows);

}  // namespace sealvec
