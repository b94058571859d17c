#include "search.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <thread>
#include <condition_variable>
#include <functional>
#include <mutex>

#include <sys/types.h>
#include <unistd.h>

namespace sealvec {

namespace {

// ---- SIMD dispatch -------------------------------------------------------------------------

std::atomic<SimdLevel> g_active_level{SimdLevel::Scalar};
std::atomic<bool> g_bf16_native_dot{true};

bool cpu_has_native_bf16_dot() {
#if defined(SEALVEC_X86_SIMD) && defined(__x86_64__)
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
  }();
  return supported;
#else
  return false;
#endif
}

bool native_bf16_dot_active() {
  return g_active_level.load() == SimdLevel::Avx512 && g_bf16_native_dot.load() &&
         cpu_has_native_bf16_dot();
}

Bf16BlockKernel bf16_kernel_for(SimdLevel level) {
  switch (level) {
#if defined(SEALVEC_X86_SIMD)
    case SimdLevel::Avx512:
      return native_bf16_dot_active() ? &simd_avx512bf16::compute_block_bf16
                                      : &simd_avx512::compute_block_bf16;
    case SimdLevel::Avx2:
      return &simd_avx2::compute_block_bf16;
#endif
    default:
      return &simd_scalar::compute_block_bf16;
  }
}

// float32 -> bfloat16, round to nearest even (inputs are finite: NaN never gets here).
inline std::uint16_t to_bf16(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

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

// A query tile is scanned against every row before the next tile starts, so the rows come from
// memory once per tile: as many queries as fit in about half of a typical L2, at most
// kMaxQueryTile (whole kernel query groups where possible).
constexpr std::size_t kQueryTileBytes = 256 * 1024;
constexpr std::size_t kMaxQueryTile = 96;
constexpr std::size_t kMaxBlockRows = 256;
constexpr std::size_t kBlockBytes = 96 * 1024;  // raw scores of one block stay in L1/L2
constexpr double kSingleThreadWork = 1.0e6;     // multiply-adds below which threads cost more
constexpr double kWorkPerThread = 5.0e5;

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
  // `kept` results per query; `capacity` candidates per query during the scan (= kept for
  // float32; the bfloat16 scan keeps more, to be scored exactly afterwards).
  Searcher(const SearchRequest& request, std::size_t kept, std::size_t capacity)
      : request_(request),
        kept_(kept),
        capacity_(capacity),
        approximate_(request.precision == Precision::BFloat16),
        kernel_(kernel_for(g_active_level.load())),
        bf16_kernel_(bf16_kernel_for(g_active_level.load())) {
    // Prefix sums of segment sizes give each segment's first global row.
    segment_starts_.reserve(request.segments.size() + 1);
    std::size_t start = 0;
    for (const RowSegment& segment : request.segments) {
      segment_starts_.push_back(start);
      start += segment.row_count;
    }
    segment_starts_.push_back(start);
    const std::size_t row_bytes = request.dim * sizeof(float);
    // Largest tile that fits, then evened out over the tiles it takes (multiples of 12 suit both
    // the 4- and the 6-query register tiles).
    const std::size_t largest_tile =
        std::clamp<std::size_t>(kQueryTileBytes / row_bytes / 12 * 12, 12, kMaxQueryTile);
    const std::size_t query_count = std::max<std::size_t>(1, request.query_count);
    const std::size_t tiles = (query_count + largest_tile - 1) / largest_tile;
    query_tile_ = (query_count + tiles - 1) / tiles;
    query_tile_ = std::min(std::min((query_tile_ + 11) / 12 * 12, largest_tile), query_count);
    block_rows_ = std::clamp<std::size_t>(kBlockBytes / (query_tile_ * sizeof(float)), 16,
                                          kMaxBlockRows);
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
    // The bfloat16 scan compares queries in bfloat16, and needs |q|^2 for l2.
    if (approximate_) {
      bf16_queries_.resize(request.query_count * request.dim);
      query_sq_norms_.resize(request.query_count);
      for (std::size_t q = 0; q < request.query_count; ++q)
        convert_to_bf16(request.queries + q * request.dim, 1, request.dim,
                        bf16_queries_.data() + q * request.dim, query_sq_norms_.data() + q);
    }
  }

  ~Searcher() {
    // The bfloat16 queries are derived from the caller's (sensitive) query vectors.
    if (!bf16_queries_.empty()) {
      volatile std::uint16_t* values = bf16_queries_.data();
      for (std::size_t i = 0; i < bf16_queries_.size(); ++i) values[i] = 0;
    }
  }

  // Scans global rows [row_begin, row_end) for queries [query_begin, query_end) into heaps
  // (one per query in the range, reset to capacity `kept_`).
  void scan(std::size_t query_begin, std::size_t query_end, std::size_t row_begin,
            std::size_t row_end, std::vector<TopK>& heaps) const {
    heaps.resize(query_end - query_begin);
    for (TopK& heap : heaps) heap.reset(capacity_);
    std::vector<float> raw(query_tile_ * block_rows_);
    std::vector<float> row_sq_norms(block_rows_);
    std::vector<float> row_norms(block_rows_);
    for (std::size_t tile = query_begin; tile < query_end; tile += query_tile_) {
      const std::size_t tile_queries = std::min(query_tile_, query_end - tile);
      // Visit each segment overlapping the row range, block by block.
      for (std::size_t s = 0; s < request_.segments.size(); ++s) {
        const std::size_t seg_begin = std::max(segment_starts_[s], row_begin);
        const std::size_t seg_end = std::min(segment_starts_[s + 1], row_end);
        for (std::size_t block = seg_begin; block < seg_end; block += block_rows_) {
          const std::size_t block_count = std::min(block_rows_, seg_end - block);
          const std::size_t local = block - segment_starts_[s];
          if (approximate_) {
            const RowSegment& segment = request_.segments[s];
            bf16_kernel_(segment.bf16_rows + local * request_.dim, block_count,
                         bf16_queries_.data() + tile * request_.dim, tile_queries, request_.dim,
                         raw.data());
            for (std::size_t q = 0; q < tile_queries; ++q)
              offer_block_approximate(tile + q, block, block_count, raw.data() + q * block_count,
                                      segment.sq_norms + local, heaps[tile + q - query_begin]);
            continue;
          }
          const float* block_rows = request_.segments[s].rows + local * request_.dim;
          kernel_(request_.metric, block_rows, block_count,
                  request_.queries + tile * request_.dim, tile_queries, request_.dim,
                  raw.data(), row_sq_norms.data());
          if (request_.metric == Metric::Cosine)
            for (std::size_t r = 0; r < block_count; ++r) row_norms[r] = std::sqrt(row_sq_norms[r]);
          for (std::size_t q = 0; q < tile_queries; ++q)
            offer_block(tile + q, block, block_count, raw.data() + q * block_count,
                        row_norms.data(), heaps[tile + q - query_begin]);
        }
      }
    }
  }

  // Scores candidates for one query exactly (the float32 kernel on each candidate row: the
  // value an exact search gives the pair) and writes the best, best first (see emit).
  void rerank(std::size_t query, std::vector<Candidate>& candidates, float* scores,
              std::int64_t* rows) const {
    for (Candidate& candidate : candidates) {
      const std::size_t row = static_cast<std::size_t>(candidate.row);
      const std::size_t s = static_cast<std::size_t>(
          std::upper_bound(segment_starts_.begin(), segment_starts_.end() - 1, row) -
          segment_starts_.begin() - 1);
      const float* data = request_.segments[s].rows + (row - segment_starts_[s]) * request_.dim;
      float raw = 0.0f, row_sq_norm = 0.0f;
      kernel_(request_.metric, data, 1, request_.queries + query * request_.dim, 1, request_.dim,
              &raw, &row_sq_norm);
      const float row_norm = request_.metric == Metric::Cosine ? std::sqrt(row_sq_norm) : 0.0f;
      const float query_norm = request_.metric == Metric::Cosine ? query_norms_[query] : 0.0f;
      candidate.key = oriented_key(request_.metric, score_of(raw, row_norm, query_norm));
    }
    const std::size_t keep = std::min(kept_, candidates.size());
    std::partial_sort(candidates.begin(), candidates.begin() + keep, candidates.end(),
                      ranks_before);
    candidates.resize(keep);
    emit(query, candidates, scores, rows);
  }

  // Scores given rows for one query exactly, as rerank does; negative rows, rows the mask
  // excludes and repeats are passed over. Rows must be in range.
  void rescore(std::size_t query, const std::int64_t* given, std::size_t count,
               std::vector<Candidate>& candidates, float* scores, std::int64_t* rows) const {
    candidates.clear();
    for (std::size_t i = 0; i < count; ++i) {
      const std::int64_t row = given[i];
      if (row < 0) continue;
      if (request_.mask != nullptr && request_.mask[row] == 0) continue;
      const std::int64_t tie = request_.tiebreak != nullptr
                                   ? load_int64(request_.tiebreak, static_cast<std::size_t>(row))
                                   : row;
      candidates.push_back(Candidate{0.0f, tie, row});
    }
    std::sort(candidates.begin(), candidates.end(),
              [](const Candidate& a, const Candidate& b) { return a.row < b.row; });
    candidates.erase(std::unique(candidates.begin(), candidates.end(),
                                 [](const Candidate& a, const Candidate& b) {
                                   return a.row == b.row;
                                 }),
                     candidates.end());
    rerank(query, candidates, scores, rows);
  }

  bool approximate() const { return approximate_; }
  std::size_t capacity() const { return capacity_; }

  // Writes one query's kept candidates, best first. Slots past the candidates (only when
  // rescoring given rows, which may be fewer than kept) get row -1 and the worst score:
  // -inf, or +inf for l2.
  void emit(std::size_t query, std::vector<Candidate>& candidates, float* scores,
            std::int64_t* rows) const {
    std::sort(candidates.begin(), candidates.end(), ranks_before);
    const float worst = request_.metric == Metric::L2 ? std::numeric_limits<float>::infinity()
                                                      : -std::numeric_limits<float>::infinity();
    for (std::size_t i = 0; i < kept_; ++i) {
      const bool found = i < candidates.size();
      scores[query * kept_ + i] = found ? score_from_key(request_.metric, candidates[i].key) : worst;
      rows[query * kept_ + i] = found ? candidates[i].row : -1;
    }
  }

 private:
  // The score of one raw kernel value (row norm for cosine).
  float score_of(float raw, float row_norm, float query_norm) const {
    if (request_.metric == Metric::L2) return std::sqrt(std::max(raw, 0.0f));
    if (request_.metric == Metric::Cosine) {
      const float denominator = row_norm * query_norm;
      return denominator > 0.0f ? raw / denominator : 0.0f;
    }
    return raw;
  }

  // The best key any row of the block could have (masks ignored). Keys are monotone in
  // the raw value for inner product and L2, so the best raw value gives it exactly; a
  // NaN is passed over (its key, -inf, never beats a full heap's worst unless that is
  // -inf too, when the block is not skipped).
  float best_key_in_block(const float* raw, std::size_t count, const float* row_norms,
                          float query_norm) const {
    const Metric metric = request_.metric;
    if (metric == Metric::Cosine) {
      float best = -std::numeric_limits<float>::infinity();
      for (std::size_t r = 0; r < count; ++r) {
        const float key = score_of(raw[r], row_norms[r], query_norm);
        best = key > best ? key : best;
      }
      return best;
    }
    float extreme = metric == Metric::L2 ? std::numeric_limits<float>::infinity()
                                         : -std::numeric_limits<float>::infinity();
    if (metric == Metric::L2) {
      for (std::size_t r = 0; r < count; ++r) extreme = raw[r] < extreme ? raw[r] : extreme;
    } else {
      for (std::size_t r = 0; r < count; ++r) extreme = raw[r] > extreme ? raw[r] : extreme;
    }
    return oriented_key(metric, score_of(extreme, 0.0f, 0.0f));
  }

  // Turns raw kernel values into scores and offers the allowed rows to the query's heap.
  void offer_block(std::size_t query, std::size_t first_row, std::size_t count, const float* raw,
                   const float* row_norms, TopK& heap) const {
    const Metric metric = request_.metric;
    const float query_norm = metric == Metric::Cosine ? query_norms_[query] : 0.0f;
    // Once the heap is full most blocks hold nothing better than its worst: one
    // vectorizable pass over the block rejects them whole.
    if (heap.full() && best_key_in_block(raw, count, row_norms, query_norm) < heap.worst_key())
      return;
    for (std::size_t r = 0; r < count; ++r) {
      const std::size_t row = first_row + r;
      if (request_.mask != nullptr && request_.mask[row] == 0) continue;
      const float score = score_of(raw[r], metric == Metric::Cosine ? row_norms[r] : 0.0f,
                                   query_norm);
      const float key = oriented_key(metric, score);
      // Cheap rejection before touching the tiebreak array.
      if (heap.full() && key < heap.worst_key()) continue;
      const std::int64_t tie = request_.tiebreak != nullptr
                                   ? load_int64(request_.tiebreak, row)
                                   : static_cast<std::int64_t>(row);
      heap.offer(Candidate{key, tie, static_cast<std::int64_t>(row)});
    }
  }

  // The bfloat16 scan's ranking key: the approximate inner product, and for l2 and cosine the
  // float32 row norm from the segment; larger is better.
  float approximate_key(float dot, float row_sq_norm, std::size_t query) const {
    switch (request_.metric) {
      case Metric::L2:
        return -(row_sq_norm + query_sq_norms_[query] - 2.0f * dot);
      case Metric::Cosine: {
        const float denominator = std::sqrt(row_sq_norm) * query_norms_[query];
        return denominator > 0.0f ? dot / denominator : 0.0f;
      }
      default:
        return dot;
    }
  }

  void offer_block_approximate(std::size_t query, std::size_t first_row, std::size_t count,
                               const float* raw, const float* sq_norms, TopK& heap) const {
    if (heap.full()) {
      float best = -std::numeric_limits<float>::infinity();
      for (std::size_t r = 0; r < count; ++r) {
        const float key = approximate_key(raw[r], sq_norms[r], query);
        best = key > best ? key : best;
      }
      if (best < heap.worst_key()) return;
    }
    for (std::size_t r = 0; r < count; ++r) {
      const std::size_t row = first_row + r;
      if (request_.mask != nullptr && request_.mask[row] == 0) continue;
      float key = approximate_key(raw[r], sq_norms[r], query);
      if (std::isnan(key)) key = -std::numeric_limits<float>::infinity();
      if (heap.full() && key < heap.worst_key()) continue;
      const std::int64_t tie = request_.tiebreak != nullptr
                                   ? load_int64(request_.tiebreak, row)
                                   : static_cast<std::int64_t>(row);
      heap.offer(Candidate{key, tie, static_cast<std::int64_t>(row)});
    }
  }

  const SearchRequest& request_;
  std::size_t kept_;
  std::size_t capacity_;
  bool approximate_;
  BlockKernel kernel_;
  Bf16BlockKernel bf16_kernel_;
  std::vector<std::uint16_t> bf16_queries_;
  std::vector<float> query_sq_norms_;
  std::vector<std::size_t> segment_starts_;
  std::size_t block_rows_ = 16;
  std::size_t query_tile_ = 1;
  std::vector<float> query_norms_;
};

// Runs task(i) for i in [0, count) on `count` new threads; the first failure is rethrown once.
// Used only when the persistent pool is busy with another caller's search.
template <class Task>
void run_on_new_threads(std::size_t count, const Task& task) {
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

// Worker threads kept between searches, so a search does not pay thread start-up. One search
// uses the pool at a time; the calling thread claims tasks as well. Grown on demand, never shrunk.
// A forked child gets a fresh pool (the parent's workers do not exist there).
class ThreadPool {
 public:
  static ThreadPool& instance() {
    static std::mutex creation;
    static ThreadPool* pool = nullptr;
    static pid_t owner = 0;
    std::lock_guard<std::mutex> lock(creation);
    const pid_t pid = getpid();
    if (pool == nullptr || owner != pid) {
      pool = new ThreadPool();  // never destroyed: workers may outlive static destruction
      owner = pid;
    }
    return *pool;
  }

  // Runs task(i) for i in [0, count); returns false, having run nothing, if the pool is busy
  // or cannot grow. Task failures are rethrown (the first by index).
  bool try_run(std::size_t count, const std::function<void(std::size_t)>& task) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    try {
      while (workers_.size() + 1 < count) {
        std::thread worker([this] { work(); });
        worker.detach();
        workers_.push_back(0);
      }
    } catch (...) {
      return false;
    }
    std::vector<std::exception_ptr> failures(count);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &task;
      failures_ = &failures;
      count_ = count;
      next_.store(0);
      pending_ = count;
      ++generation_;
    }
    wake_.notify_all();
    // The caller claims indices too, so a slow-waking worker delays nothing.
    for (std::size_t index = next_.fetch_add(1); index < count; index = next_.fetch_add(1)) {
      try {
        task(index);
      } catch (...) {
        failures[index] = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mutex_);
      --pending_;
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [this] { return pending_ == 0; });
      task_ = nullptr;
    }
    for (const std::exception_ptr& failure : failures)
      if (failure) std::rethrow_exception(failure);
    return true;
  }

 private:
  void work() {
    std::uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      // Claim indices until none are left; several workers may share one search.
      while (task_ != nullptr) {
        const std::size_t index = next_.fetch_add(1);
        if (index >= count_) break;
        const std::function<void(std::size_t)>* task = task_;
        std::vector<std::exception_ptr>* failures = failures_;
        lock.unlock();
        try {
          (*task)(index);
        } catch (...) {
          (*failures)[index] = std::current_exception();
        }
        lock.lock();
        if (--pending_ == 0) done_.notify_one();
      }
    }
  }

  std::mutex busy_;  // held for a whole search
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<char> workers_;
  const std::function<void(std::size_t)>* task_ = nullptr;
  std::vector<std::exception_ptr>* failures_ = nullptr;
  std::size_t count_ = 0;
  std::atomic<std::size_t> next_{0};
  std::size_t pending_ = 0;
  std::uint64_t generation_ = 0;
};

// Runs task(i) for i in [0, count) in parallel; the first failure is rethrown once.
template <class Task>
void run_parallel(std::size_t count, const Task& task) {
  const std::function<void(std::size_t)> wrapped = [&task](std::size_t i) { task(i); };
  if (!ThreadPool::instance().try_run(count, wrapped)) run_on_new_threads(count, task);
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

void rescore_rows(const SearchRequest& request, std::size_t kept, const std::int64_t* given,
                  std::size_t per_query, float* scores, std::int64_t* rows) {
  if (kept == 0 || request.query_count == 0) return;
  Searcher searcher(request, kept, kept);
  std::vector<Candidate> candidates;
  candidates.reserve(per_query);
  for (std::size_t q = 0; q < request.query_count; ++q)
    searcher.rescore(q, given + q * per_query, per_query, candidates, scores, rows);
}

void run_search(const SearchRequest& request, std::size_t kept, float* scores,
                std::int64_t* rows) {
  const std::size_t row_count = total_rows(request);
  const std::size_t query_count = request.query_count;
  if (kept == 0 || query_count == 0) return;
  // The bfloat16 scan keeps `candidates` per query (never fewer than k, never more than
  // there are rows to find), then scores those exactly.
  const bool approximate = request.precision == Precision::BFloat16;
  const std::size_t capacity =
      approximate ? std::min(std::max(request.candidates, kept), allowed_rows(request)) : kept;
  Searcher searcher(request, kept, capacity);
  const auto finish = [&](std::size_t q, std::vector<Candidate>& candidates) {
    if (approximate)
      searcher.rerank(q, candidates, scores, rows);
    else
      searcher.emit(q, candidates, scores, rows);
  };

  // Small workloads stay on the calling thread; otherwise about 1M multiply-adds per thread.
  const double work = static_cast<double>(row_count) * request.dim * query_count;
  std::size_t threads = std::max<std::size_t>(1, request.threads);
  if (work < kSingleThreadWork) threads = 1;
  threads = std::min<std::size_t>(threads, static_cast<std::size_t>(work / kWorkPerThread) + 1);

  threads = std::min(threads, row_count);
  if (threads <= 1) {
    std::vector<TopK> heaps;
    searcher.scan(0, query_count, 0, row_count, heaps);
    for (std::size_t q = 0; q < query_count; ++q) finish(q, heaps[q].items());
    return;
  }

  // Each thread scans a contiguous row range for every query (so the rows are read once in
  // all), then per-query heaps are merged.
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
    // The top `capacity` of the union is unique under the strict total order.
    std::partial_sort(merged.begin(), merged.begin() + capacity, merged.end(), ranks_before);
    merged.resize(capacity);
    finish(q, merged);
  }
}

void convert_to_bf16(const float* values, std::size_t rows, std::size_t dim,
                     std::uint16_t* bf16_out, float* sq_norms_out) {
  for (std::size_t r = 0; r < rows; ++r) {
    const float* row = values + r * dim;
    std::uint16_t* out = bf16_out + r * dim;
    double sum = 0.0;
    for (std::size_t d = 0; d < dim; ++d) {
      float value;
      std::memcpy(&value, row + d, sizeof(value));  // rows may be unaligned
      out[d] = to_bf16(value);
      sum += static_cast<double>(value) * value;
    }
    sq_norms_out[r] = static_cast<float>(sum);
  }
}

const char* bf16_dot_name() {
  return native_bf16_dot_active() ? "avx512_bf16" : simd_level_name(g_active_level.load());
}

void set_bf16_native_dot(bool allowed) { g_bf16_native_dot.store(allowed); }

}  // namespace sealvec
