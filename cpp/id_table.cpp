#include "id_table.hpp"

#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <random>
#include <string>
#include <system_error>
#include <thread>

namespace py = pybind11;

namespace sealvec {

namespace {

// Slots pack the top kTagBits of an id's hash above (row + 1), so most probes that
// meet another id are told apart without comparing bytes.
constexpr int kTagBits = 24;
constexpr int kRowBits = 64 - kTagBits;
constexpr std::uint64_t kRowMask = (std::uint64_t{1} << kRowBits) - 1;
// From this many ids the sort for ranks() runs beside the hash index, on its own thread.
constexpr std::size_t kParallelRows = 16384;

std::uint64_t load_little_endian_u64(const unsigned char* bytes) {
  std::uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

// Up to 8 bytes as an integer whose order is the bytes' lexicographic order (missing
// bytes count as zero).
std::uint64_t big_endian_prefix(const char* bytes, std::size_t size) {
  unsigned char buffer[8] = {};
  std::memcpy(buffer, bytes, std::min<std::size_t>(size, 8));
  std::uint64_t value = 0;
  for (unsigned char byte : buffer) value = (value << 8) | byte;
  return value;
}

// Seeded per process, so which ids collide cannot be worked out in advance.
std::uint64_t hash_seed() {
  static const std::uint64_t seed = [] {
    std::uint64_t value = 0x243F6A8885A308D3ULL;
    try {
      std::random_device device;
      value ^= (std::uint64_t{device()} << 32) | device();
    } catch (...) {
      value ^= reinterpret_cast<std::uintptr_t>(&value);
    }
    return value;
  }();
  return seed;
}

std::uint64_t hash_id(std::string_view id, std::uint64_t seed) {
  constexpr std::uint64_t k = 0x9E3779B97F4A7C15ULL;
  const char* bytes = id.data();
  std::size_t left = id.size();
  std::uint64_t h = seed ^ (left * k);
  while (left >= 8) {
    std::uint64_t word;
    std::memcpy(&word, bytes, 8);
    h = (h ^ word) * k;
    h ^= h >> 31;
    bytes += 8;
    left -= 8;
  }
  if (left > 0) {
    std::uint64_t word = 0;
    std::memcpy(&word, bytes, left);
    h = (h ^ word) * k;
    h ^= h >> 31;
  }
  // splitmix64's finaliser: every input bit reaches the slot and tag bits.
  h ^= h >> 30;
  h *= 0xBF58476D1CE4E5B9ULL;
  h ^= h >> 27;
  h *= 0x94D049BB133111EBULL;
  h ^= h >> 31;
  return h;
}

// Each row's position when rows are sorted by their ids' bytes, ties (equal ids) by row
// (a stable sort): LSD radix sort on
// the 8 bytes after the prefix all ids share, then a comparison sort within each run of
// equal keys (ids that agree on those 8 bytes, which are rare unless ids are equal).
std::vector<std::int64_t> ranks_in_id_order(const std::vector<std::string_view>& ids) {
  const std::size_t n = ids.size();
  std::vector<std::int64_t> ranks(n);
  if (n == 0) return ranks;

  std::size_t common = ids[0].size();
  for (std::size_t row = 1; row < n && common > 0; ++row) {
    const std::string_view id = ids[row];
    if (id.size() < common) common = id.size();
    if (std::memcmp(ids[0].data(), id.data(), common) != 0) {
      std::size_t same = 0;
      while (ids[0][same] == id[same]) ++same;
      common = same;
    }
  }

  struct Entry {
    std::uint64_t key;
    std::int64_t row;
  };
  std::vector<Entry> entries(n), scratch(n);
  std::vector<std::array<std::size_t, 256>> counts(8);
  for (auto& count : counts) count.fill(0);
  for (std::size_t row = 0; row < n; ++row) {
    const std::string_view id = ids[row];
    const std::uint64_t key = big_endian_prefix(id.data() + common, id.size() - common);
    entries[row] = {key, static_cast<std::int64_t>(row)};
    for (int byte = 0; byte < 8; ++byte) ++counts[byte][(key >> (8 * byte)) & 0xFF];
  }
  for (int byte = 0; byte < 8; ++byte) {
    auto& count = counts[byte];
    if (count[(entries[0].key >> (8 * byte)) & 0xFF] == n) continue;  // all alike
    std::size_t position = 0;
    for (std::size_t& c : count) {
      const std::size_t start = position;
      position += c;
      c = start;
    }
    for (const Entry& entry : entries) scratch[count[(entry.key >> (8 * byte)) & 0xFF]++] = entry;
    entries.swap(scratch);
  }

  for (std::size_t begin = 0; begin < n;) {
    std::size_t end = begin + 1;
    while (end < n && entries[end].key == entries[begin].key) ++end;
    if (end - begin > 1) {
      std::stable_sort(entries.begin() + begin, entries.begin() + end,
                       [&](const Entry& a, const Entry& b) {
                         return ids[a.row].substr(common) < ids[b.row].substr(common);
                       });
    }
    begin = end;
  }
  for (std::size_t position = 0; position < n; ++position)
    ranks[entries[position].row] = static_cast<std::int64_t>(position);
  return ranks;
}

}  // namespace

class IdTable::Operation {
 public:
  explicit Operation(IdTable& table) : table_(table) {
    table_.ensure_open();
    ++table_.active_operations_;
  }
  ~Operation() {
    // The last operation to finish performs a close() that arrived meanwhile.
    if (--table_.active_operations_ == 0 && table_.closed_) table_.release_views();
  }

 private:
  IdTable& table_;
};

IdTable::IdTable(const py::sequence& offsets, const py::sequence& data) {
  if (py::len(offsets) != py::len(data))
    throw py::value_error("offsets and data must have one entry per shard, got " +
                          std::to_string(py::len(offsets)) + " and " +
                          std::to_string(py::len(data)));
  // Hold a view of every buffer (needs the GIL); the rest runs without it.
  for (std::size_t i = 0; i < py::len(offsets); ++i) {
    const std::string index = "[" + std::to_string(i) + "]";
    shards_.push_back(Shard{PyBufferView::acquire(offsets[i], "offsets" + index),
                            PyBufferView::acquire(data[i], "data" + index)});
  }
  py::gil_scoped_release without_gil;

  // Validate every shard's offsets completely and keep a view of each id.
  for (std::size_t i = 0; i < shards_.size(); ++i) {
    const std::string index = "[" + std::to_string(i) + "]";
    const Shard& shard = shards_[i];
    const std::size_t offset_bytes = shard.offsets.size();
    if (offset_bytes < 8 || offset_bytes % 8 != 0)
      throw py::value_error("offsets" + index + " must hold n+1 little-endian uint64 (" +
                            std::to_string(offset_bytes) + " bytes given)");
    const std::size_t rows = offset_bytes / 8 - 1;
    const unsigned char* table = shard.offsets.data();
    const char* bytes = reinterpret_cast<const char*>(shard.data.data());
    std::uint64_t begin = load_little_endian_u64(table);
    if (begin != 0) throw py::value_error("offsets" + index + "[0] must be 0");
    const std::uint64_t last = load_little_endian_u64(table + 8 * rows);
    // Non-decreasing offsets that end at the data's length all lie inside the data.
    ids_.reserve(ids_.size() + rows);
    for (std::size_t j = 0; j < rows; ++j) {
      const std::uint64_t end = load_little_endian_u64(table + 8 * (j + 1));
      if (end < begin || end > last)
        throw py::value_error("offsets" + index + " must be non-decreasing (at " +
                              std::to_string(j + 1) + ")");
      ids_.emplace_back(bytes + begin, end - begin);
      begin = end;
    }
    if (last != shard.data.size())
      throw py::value_error("offsets" + index + " must end at len(data" + index + ") = " +
                            std::to_string(shard.data.size()) + ", ends at " +
                            std::to_string(last));
    row_count_ += rows;
  }
  if (row_count_ >= kRowMask)
    throw py::value_error("IdTable holds at most " + std::to_string(kRowMask - 1) + " ids");

  // With many ids, sort them for ranks() on a second thread while this one indexes them.
  std::thread sorter;
  if (row_count_ >= kParallelRows) {
    try {
      sorter = std::thread([this] {
        try {
          ranks_ = ranks_in_id_order(ids_);
        } catch (...) {
          ranks_.clear();  // only std::bad_alloc can get here; reported below
        }
      });
    } catch (const std::system_error&) {
      // no thread to spare: sort below, on this one
    }
  }
  try {
    build_index();
  } catch (...) {
    if (sorter.joinable()) sorter.join();
    throw;
  }
  if (sorter.joinable()) {
    sorter.join();
    if (ranks_.size() != row_count_) throw std::bad_alloc();  // the sort ran out of memory
  } else {
    ranks_ = ranks_in_id_order(ids_);
  }
}

void IdTable::build_index() {
  const std::size_t n = row_count_;
  std::size_t capacity = 16;
  while (capacity < 2 * n) capacity <<= 1;  // at most half full: short probes
  slots_.assign(capacity, 0);
  slot_mask_ = capacity - 1;
  previous_same_id_.assign(n, -1);

  // Hashes run kAhead rows ahead of the inserts, so each slot is prefetched in time.
  const std::uint64_t seed = hash_seed();
  constexpr std::size_t kAhead = 8;
  std::uint64_t ahead[kAhead];
  for (std::size_t row = 0; row < std::min(n, kAhead); ++row) {
    ahead[row] = hash_id(ids_[row], seed);
    __builtin_prefetch(&slots_[ahead[row] & slot_mask_]);
  }

  // Later rows with the same id take the slot and chain back to earlier ones.
  for (std::size_t row = 0; row < n; ++row) {
    const std::uint64_t hash = ahead[row % kAhead];
    if (row + kAhead < n) {
      const std::uint64_t next = hash_id(ids_[row + kAhead], seed);
      ahead[row % kAhead] = next;
      __builtin_prefetch(&slots_[next & slot_mask_]);
    }
    const std::uint64_t tag = hash >> kRowBits;
    const std::uint64_t packed = (tag << kRowBits) | (row + 1);
    for (std::size_t slot = hash & slot_mask_;; slot = (slot + 1) & slot_mask_) {
      const std::uint64_t value = slots_[slot];
      if (value == 0) {
        slots_[slot] = packed;
        break;
      }
      if ((value >> kRowBits) == tag) {
        const std::int64_t other = static_cast<std::int64_t>(value & kRowMask) - 1;
        if (ids_[other] == ids_[row]) {
          previous_same_id_[row] = other;
          slots_[slot] = packed;
          break;
        }
      }
    }
  }
}

std::int64_t IdTable::find_newest(std::string_view id, std::uint64_t h) const {
  const std::uint64_t tag = h >> kRowBits;
  for (std::size_t slot = h & slot_mask_;; slot = (slot + 1) & slot_mask_) {
    const std::uint64_t value = slots_[slot];
    if (value == 0) return -1;
    if ((value >> kRowBits) == tag) {
      const std::int64_t row = static_cast<std::int64_t>(value & kRowMask) - 1;
      if (ids_[row] == id) return row;
    }
  }
}

IdTable::~IdTable() { release_views(); }

void IdTable::ensure_open() const {
  if (closed_) throw py::value_error("IdTable is closed");
}

void IdTable::release_views() {
  std::vector<std::string_view>().swap(ids_);
  std::vector<std::uint64_t>().swap(slots_);
  std::vector<std::int64_t>().swap(previous_same_id_);
  std::vector<std::int64_t>().swap(ranks_);
  for (Shard& shard : shards_) {
    shard.offsets.release();
    shard.data.release();
  }
}

void IdTable::close() {
  closed_ = true;
  if (active_operations_ == 0) release_views();
}

std::size_t IdTable::size() const {
  ensure_open();
  return row_count_;
}

py::array_t<std::int64_t> IdTable::lookup(const py::list& ids, const py::object& mask) {
  Operation operation(*this);
  // Borrow UTF-8 views of the query strings; `holders` keeps them alive without the GIL.
  std::vector<py::object> holders;
  std::vector<std::string_view> keys;
  holders.reserve(ids.size());
  keys.reserve(ids.size());
  for (py::handle id : ids) {
    if (!PyUnicode_Check(id.ptr()))
      throw py::value_error("ids must be a list of str, got " +
                            std::string(py::str(py::type::of(id))));
    Py_ssize_t length = 0;
    const char* utf8 = PyUnicode_AsUTF8AndSize(id.ptr(), &length);
    if (utf8 == nullptr) throw py::error_already_set();
    holders.push_back(py::reinterpret_borrow<py::object>(id));
    keys.emplace_back(utf8, static_cast<std::size_t>(length));
  }
  PyBufferView mask_view;
  const unsigned char* live = nullptr;
  if (!mask.is_none()) {
    mask_view = PyBufferView::acquire(mask, "mask");
    if (mask_view.size() != row_count_)
      throw py::value_error("mask must have one uint8 per row (" + std::to_string(row_count_) +
                            " bytes), got " + std::to_string(mask_view.size()) + " bytes");
    live = mask_view.data();
  }
  py::array_t<std::int64_t> result(static_cast<py::ssize_t>(keys.size()));
  std::int64_t* out = result.mutable_data();
  {
    py::gil_scoped_release without_gil;
    // Hash every query first, so each probe's slot can be prefetched a few queries ahead.
    const std::uint64_t seed = hash_seed();
    std::vector<std::uint64_t> hashes(keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) hashes[i] = hash_id(keys[i], seed);
    // Newest row first, walking back through older duplicates until one is live.
    constexpr std::size_t kAhead = 8;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (i + kAhead < keys.size()) __builtin_prefetch(&slots_[hashes[i + kAhead] & slot_mask_]);
      std::int64_t row = find_newest(keys[i], hashes[i]);
      while (row >= 0 && live != nullptr && live[row] == 0) row = previous_same_id_[row];
      out[i] = row;
    }
  }
  return result;
}

py::str IdTable::id_at(std::int64_t row) {
  Operation operation(*this);
  if (row < 0 || static_cast<std::uint64_t>(row) >= row_count_)
    throw py::index_error("row " + std::to_string(row) + " is out of range for " +
                          std::to_string(row_count_) + " ids");
  const std::string_view id = ids_[static_cast<std::size_t>(row)];
  PyObject* text = PyUnicode_DecodeUTF8(id.data(), static_cast<Py_ssize_t>(id.size()), "strict");
  if (text == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(text);
}

py::list IdTable::ids_at(const py::array_t<std::int64_t>& rows) {
  Operation operation(*this);
  py::list result;
  const py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> flat(rows);
  const std::int64_t* data = flat.data();
  for (py::ssize_t i = 0; i < flat.size(); ++i) result.append(id_at(data[i]));
  return result;
}

py::array_t<std::int64_t> IdTable::ranks() {
  Operation operation(*this);
  py::array_t<std::int64_t> result(static_cast<py::ssize_t>(row_count_));
  std::int64_t* out = result.mutable_data();
  if (row_count_ > 0) std::memcpy(out, ranks_.data(), row_count_ * sizeof(std::int64_t));
  return result;
}

void register_id_table(py::module_& module) {
  py::class_<IdTable>(module, "IdTable",
                      "String ids kept in the caller's buffers, with a hash index to rows.")
      .def(py::init<const py::sequence&, const py::sequence&>(), py::arg("offsets"),
           py::arg("data"))
      .def_property_readonly("size", &IdTable::size)
      .def("lookup", &IdTable::lookup, py::arg("ids"), py::arg("mask") = py::none())
      .def("id_at", &IdTable::id_at, py::arg("row"))
      .def("ids_at", &IdTable::ids_at, py::arg("rows"))
      .def("ranks", &IdTable::ranks)
      .def("close", &IdTable::close)
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](IdTable& self, py::object, py::object, py::object) {
        self.close();
        return false;
      });
}

}  // namespace sealvec
