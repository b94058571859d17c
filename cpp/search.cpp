#include "search.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <thread>

namespace sealvec {

namespace {

// ---- SIMD dispatch -------------------------------------------------------------------------

std::atomic<SimdLevel> g_active_level{SimdLevel::Scalar};

BlockKernel kernel_for(SimdLevel level) {
  switch (level) {
#if defined(SEALVEC_X86_SIMD)
    case SimdLevel::Avx512:
      return &simd_avx512::compute_block;
    case SimdLevel::Avx2:
      return &simd_avx2::compute_block;
#endif
    default:
      return &simd_scalar::compute_block;
  }
}

// ---- top-k bookkeeping ---------------------------------------------------------------------

// `key` is the score oriented so that larger is better (negated for L2); NaN never gets here.
struct Candidate {
  float key;
  std::int64_t tie;
  std::int64_t row;
};

// Strict total order: better key, then smaller tiebreak, then smaller global row.
inline bool ranks_before(const Candidate& a, const Candidate& b) {
  if (a.key != b.key) return a.key > b.key;
  if (a.tie != b.tie) return a.tie < b.tie;
  return a.row < b.row;
}

// Bounded max-heap whose top is the worst kept candidate.
class TopK {
 public:
  void reset(std::size_t capacity) {
    capacity_ = capacity;
    items_.clear();
    items_.reserve(std::min<std::size_t>(capacity, 1u << 16));
  }
  bool full() const { return items_.size() == capacity_; }
  float worst_key() const { return items_.front().key; }
  void offer(const Candidate& candidate) {
    if (!full()) {
      items_.push_back(candidate);
      std::push_heap(items_.begin(), items_.end(), ranks_before);
    } else if (ranks_before(candidate, items_.front())) {
      std::pop_heap(items_.begin(), items_.end(), ranks_before);
      items_.back() = candidate;
      std::push_heap(items_.begin(), items_.end(), ranks_before);
    }
  }
  std::vector<Candidate>& items() { return items_; }

 private:
  std::size_t capacity_ = 0;
  std::vector<Candidate> items_;
};

constexpr std::size_t kQueryTile = 8;
constexpr std::size_t kBlockBytes = 96 * 1024;  // a row block stays in L2 across a query tile
constexpr double kSingleThreadWork = 2.0e6;     // multiply-adds below which threads cost more
constexpr double kWorkPerThread = 1.0e6;

inline std::int64_t load_int64(const unsigned char* base, std::size_t index) {
  std::int64_t value;
  std::memcpy(&value, base + index * sizeof(value), sizeof(value));
  return value;
}

inline float oriented_key(Metric metric, float score) {
  if (std::isnan(score)) return -std::numeric_limits<float>::infinity();
  return metric == Metric::L2 ? -score : score;
}

inline float score_from_key(Metric metric, float key) { return metric == Metric::L2 ? -key : key; }

class Searcher {
 public:
  Searcher(const SearchRequest& request, std::size_t kept)
      : request_(request), kept_(kept), kernel_(kernel_for(g_active_level.load())) {
    // Prefix sums of segment sizes give each segment's first global row.
    segment_starts_.reserve(request.segments.size() + 1);
    std::size_t start = 0;
    for (const RowSegment& segment : request.segments) {
      segment_starts_.push_back(start);
      start += segment.row_count;
    }
    segment_starts_.push_back(start);
    const std::size_t row_bytes = request.dim * sizeof(float);
    block_rows_ = std::clamp<std::size_t>(kBlockBytes / row_bytes, 16, 1024);
    // Cosine needs each query's norm once; accumulated in double, then rounded.
    if (request.metric == Metric::Cosine) {
      query_norms_.resize(request.query_count);
      for (std::size_t q = 0; q < request.query_count; ++q) {
        double sum = 0.0;
        for (std::size_t d = 0; d < request.dim; ++d) {
          float value;
          std::memcpy(&value, request.queries + q * request.dim + d, sizeof(value));
          sum += static_cast<double>(value) * value;
        }
        query_norms_[q] = std::sqrt(static_cast<float>(sum));
      }
    }
  }

  // Scans global rows [row_begin, row_end) for queries [query_begin, query_end) into heaps
  // (one per query in the range, reset to capacity `kept_`).
  void scan(std::size_t query_begin, std::size_t query_end, std::size_t row_begin,
            std::size_t row_end, std::vector<TopK>& heaps) const {
    heaps.resize(query_end - query_begin);
    for (TopK& heap : heaps) heap.reset(kept_);
    std::vector<float> raw(kQueryTile * block_rows_);
    std::vector<float> row_sq_norms(block_rows_);
    for (std::size_t tile = query_begin; tile < query_end; tile += kQueryTile) {
      const std::size_t tile_queries = std::min(kQueryTile, query_end - tile);
      // Visit each segment overlapping the row range, block by block.
      for (std::size_t s = 0; s < request_.segments.size(); ++s) {
        const std::size_t seg_begin = std::max(segment_starts_[s], row_begin);
        const std::size_t seg_end = std::min(segment_starts_[s + 1], row_end);
        for (std::size_t block = seg_begin; block < seg_end; block += block_rows_) {
          const std::size_t block_count = std::min(block_rows_, seg_end - block);
          const float* block_rows =
              request_.segments[s].rows + (block - segment_starts_[s]) * request_.dim;
          kernel_(request_.metric, block_rows, block_count,
                  request_.queries + tile * request_.dim, tile_queries, request_.dim,
                  raw.data(), row_sq_norms.data());
          for (std::size_t q = 0; q < tile_queries; ++q)
            offer_block(tile + q, block, block_count, raw.data() + q * block_count,
                        row_sq_norms.data(), heaps[tile + q - query_begin]);
        }
      }
    }
  }

  // Writes one query's kept candidates, best first.
  void emit(std::size_t query, std::vector<Candidate>& candidates, float* scores,
            std::int64_t* rows) const {
    std::sort(candidates.begin(), candidates.end(), ranks_before);
    for (std::size_t i = 0; i < kept_; ++i) {
      scores[query * kept_ + i] = score_from_key(request_.metric, candidates[i].key);
      rows[query * kept_ + i] = candidates[i].row;
    }
  }

 private:
  // Turns raw kernel values into scores and offers the allowed rows to the query's heap.
  void offer_block(std::size_t query, std::size_t first_row, std::size_t count, const float* raw,
                   const float* row_sq_norms, TopK& heap) const {
    const Metric metric = request_.metric;
    for (std::size_t r = 0; r < count; ++r) {
      const std::size_t row = first_row + r;
      if (request_.mask != nullptr && request_.mask[row] == 0) continue;
      float score = raw[r];
      if (metric == Metric::L2) {
        score = std::sqrt(std::max(score, 0.0f));
      } else if (metric == Metric::Cosine) {
        const float denominator = std::sqrt(row_sq_norms[r]) * query_norms_[query];
        score = denominator > 0.0f ? score / denominator : 0.0f;
      }
      const float key = oriented_key(metric, score);
      // Cheap rejection before touching the tiebreak array.
      if (heap.full() && key < heap.worst_key()) continue;
      const std::int64_t tie = request_.tiebreak != nullptr
                                   ? load_int64(request_.tiebreak, row)
                                   : static_cast<std::int64_t>(row);
      heap.offer(Candidate{key, tie, static_cast<std::int64_t>(row)});
    }
  }

  const SearchRequest& request_;
  std::size_t kept_;
  BlockKernel kernel_;
  std::vector<std::size_t> segment_starts_;
  std::size_t block_rows_ = 16;
  std::vector<float> query_norms_;
};

// Runs task(i) for i in [0, count) on `count` threads; the first failure is rethrown once.
template <class Task>
void run_parallel(std::size_t count, const Task& task) {
  std::vector<std::exception_ptr> failures(count);
  std::vector<std::thread> workers;
  workers.reserve(count);
  std::exception_ptr start_failure;
  try {
    for (std::size_t i = 0; i < count; ++i) {
      workers.emplace_back([&, i] {
        try {
          task(i);
        } catch (...) {
          failures[i] = std::current_exception();
        }
      });
    }
  } catch (...) {
    start_failure = std::current_exception();  // could not start a thread
  }
  for (std::thread& worker : workers) worker.join();
  if (start_failure) std::rethrow_exception(start_failure);
  for (const std::exception_ptr& failure : failures)
    if (failure) std::rethrow_exception(failure);
}

}  // namespace

// ---- public API ----------------------------------------------------------------------------

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Avx512:
      return "avx512";
    case SimdLevel::Avx2:
      return "avx2";
    default:
      return "scalar";
  }
}

bool parse_simd_level(const std::string& name, SimdLevel* level) {
  if (name == "scalar") *level = SimdLevel::Scalar;
  else if (name == "avx2") *level = SimdLevel::Avx2;
  else if (name == "avx512") *level = SimdLevel::Avx512;
  else return false;
  return true;
}

std::vector<SimdLevel> supported_simd_levels() {
  std::vector<SimdLevel> levels{SimdLevel::Scalar};
#if defined(SEALVEC_X86_SIMD) && defined(__x86_64__)
  // libgcc's checks include OS support for the wider register state (XGETBV).
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    levels.push_back(SimdLevel::Avx2);
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    levels.push_back(SimdLevel::Avx512);
#endif
  return levels;
}

SimdLevel best_supported_simd_level() { return supported_simd_levels().back(); }

bool simd_level_supported(SimdLevel level) {
  const std::vector<SimdLevel> levels = supported_simd_levels();
  return std::find(levels.begin(), levels.end(), level) != levels.end();
}

SimdLevel active_simd_level() { return g_active_level.load(); }

void set_active_simd_level(SimdLevel level) { g_active_level.store(level); }

std::size_t total_rows(const SearchRequest& request) {
  std::size_t rows = 0;
  for (const RowSegment& segment : request.segments) rows += segment.row_count;
  return rows;
}

std::size_t allowed_rows(const SearchRequest& request) {
  const std::size_t rows = total_rows(request);
  if (request.mask == nullptr) return rows;
  std::size_t allowed = 0;
  for (std::size_t i = 0; i < rows; ++i) allowed += request.mask[i] != 0;
  return allowed;
}

void run_search(const SearchRequest& request, std::size_t kept, float* scores,
                std::int64_t* rows) {
  const std::size_t row_count = total_rows(request);
  const std::size_t query_count = request.query_count;
  if (kept == 0 || query_count == 0) return;
  Searcher searcher(request, kept);

  // Small workloads stay on the calling thread; otherwise about 1M multiply-adds per thread.
  const double work = static_cast<double>(row_count) * request.dim * query_count;
  std::size_t threads = std::max<std::size_t>(1, request.threads);
  if (work < kSingleThreadWork) threads = 1;
  threads = std::min<std::size_t>(threads, static_cast<std::size_t>(work / kWorkPerThread) + 1);

  const std::size_t query_tiles = (query_count + kQueryTile - 1) / kQueryTile;
  if (threads == 1) {
    std::vector<TopK> heaps;
    searcher.scan(0, query_count, 0, row_count, heaps);
    for (std::size_t q = 0; q < query_count; ++q) searcher.emit(q, heaps[q].items(), scores, rows);
    return;
  }

  if (query_tiles >= threads) {
    // Enough query tiles: each thread owns whole queries and writes them directly.
    run_parallel(threads, [&](std::size_t t) {
      const std::size_t tile_begin = query_tiles * t / threads;
      const std::size_t tile_end = query_tiles * (t + 1) / threads;
      const std::size_t query_begin = tile_begin * kQueryTile;
      const std::size_t query_end = std::min(query_count, tile_end * kQueryTile);
      std::vector<TopK> heaps;
      searcher.scan(query_begin, query_end, 0, row_count, heaps);
      for (std::size_t q = query_begin; q < query_end; ++q)
        searcher.emit(q, heaps[q - query_begin].items(), scores, rows);
    });
    return;
  }

  // Few queries: each thread scans a contiguous row range, then per-query heaps are merged.
  threads = std::min(threads, row_count);
  std::vector<std::vector<TopK>> partial(threads);
  run_parallel(threads, [&](std::size_t t) {
    searcher.scan(0, query_count, row_count * t / threads, row_count * (t + 1) / threads,
                  partial[t]);
  });
  std::vector<Candidate> merged;
  for (std::size_t q = 0; q < query_count; ++q) {
    merged.clear();
    for (std::size_t t = 0; t < threads; ++t) {
      std::vector<Candidate>& items = partial[t][q].items();
      merged.insert(merged.end(), items.begin(), items.end());
      std::vector<Candidate>().swap(items);  // free as we go
    }
    // The top `kept` of the union is unique under the strict total order.
    std::partial_sort(merged.begin(), merged.begin() + kept, merged.end(), ranks_before);
    merged.resize(kept);
    searcher.emit(q, merged, scores, rows);
  }
}

}  // namespace sealvec
