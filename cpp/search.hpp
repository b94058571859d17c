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
  // Reduced-precision scans only: the same rows as bfloat16 bit patterns, and each row's
  // squared float32 norm.
  const std::uint16_t* bf16_rows = nullptr;
  const float* sq_norms = nullptr;
};

// How candidates are found. Float32 scans every row exactly. BFloat16 scans the bfloat16
// copies for `candidates` per query by approximate score, then scores those exactly in
// float32 (the same values an exact search gives them) and keeps the best k.
enum class Precision { Float32, BFloat16 };

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
  Precision precision = Precision::Float32;
  std::size_t candidates = 0;                // BFloat16: candidates per query, >= k
};

std::size_t total_rows(const SearchRequest& request);
// Number of rows the mask allows (all rows when there is no mask).
std::size_t allowed_rows(const SearchRequest& request);

// Fills scores[q * kept + i] and rows[q * kept + i], best first, where
// kept = min(k, allowed_rows(request)). Deterministic for any thread count.
void run_search(const SearchRequest& request, std::size_t kept, float* scores,
                std::int64_t* rows);

// Scores the rows given for each query (per_query int64 each, query-major; -1 and rows the
// mask excludes are passed over, repeats count once) exactly, as run_search would, and
// fills scores/rows like it, best first; slots past the distinct allowed rows given get row
// -1 and the worst score (-inf, +inf for l2). Every given row must be < total_rows.
void rescore_rows(const SearchRequest& request, std::size_t kept, const std::int64_t* given,
                  std::size_t per_query, float* scores, std::int64_t* rows);

// bfloat16 (round to nearest even) copies of `count` float32 values, and for each of `rows`
// rows of `dim` values its squared norm (accumulated in double, rounded to float).
void convert_to_bf16(const float* values, std::size_t rows, std::size_t dim,
                     std::uint16_t* bf16_out, float* sq_norms_out);

// The instructions the bfloat16 scan uses at the active level: "avx512_bf16" (native dot
// products), "avx512", "avx2" or "scalar" (widened to float32 and multiplied).
const char* bf16_dot_name();
// Forces the widening path even where native bfloat16 dot products exist (for tests).
void set_bf16_native_dot(bool allowed);

}  // namespace sealvec
