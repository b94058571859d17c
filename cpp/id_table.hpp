// IdTable: string ids that stay inside the caller's (locked) buffers, indexed by an
// open-addressing hash table of row numbers; no copies of id bytes are made.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string_view>
#include <vector>

#include "py_buffer.hpp"

namespace sealvec {

class IdTable {
 public:
  IdTable(const pybind11::sequence& offsets, const pybind11::sequence& data);
  ~IdTable();

  std::size_t size() const;
  pybind11::array_t<std::int64_t> lookup(const pybind11::list& ids, const pybind11::object& mask);
  pybind11::str id_at(std::int64_t row);
  pybind11::list ids_at(const pybind11::array_t<std::int64_t>& rows);
  pybind11::array_t<std::int64_t> ranks();
  void close();

 private:
  struct Shard {
    PyBufferView offsets;
    PyBufferView data;
  };
  // Keeps the table open while a method runs without the GIL; close() then defers.
  class Operation;

  void ensure_open() const;
  void release_views();
  void build_index();  // runs without the GIL
  std::int64_t find_newest(std::string_view id, std::uint64_t hash) const;

  std::vector<Shard> shards_;
  std::size_t row_count_ = 0;
  // Every row's id, validated once against its shard's buffers (which stay held).
  std::vector<std::string_view> ids_;
  // Hash slots: 0 for empty, else the high kTagBits of the id's hash above row + 1 of
  // the newest row with that id. For each row, the previous row with the same id or -1.
  std::vector<std::uint64_t> slots_;
  std::uint64_t slot_mask_ = 0;
  std::vector<std::int64_t> previous_same_id_;
  // Each row's position in id order (bytes, then row): what ranks() returns.
  std::vector<std::int64_t> ranks_;
  bool closed_ = false;
  int active_operations_ = 0;  // changed only with the GIL held
};

void register_id_table(pybind11::module_& module);

}  // namespace sealvec
