// sealvec._core: locked memory, the top-k search kernel, the id table, metadata filters and
// helpers for sealing new records.
#include <pybind11/pybind11.h>

#include "id_table.hpp"
#include "secure_buffer.hpp"

namespace sealvec {
void register_search(pybind11::module_& module);
void register_filter(pybind11::module_& module);
void register_ingest(pybind11::module_& module);
}

PYBIND11_MODULE(_core, module) {
  module.doc() = "sealvec native core: SecureBuffer, search, IdTable, filter_mask, ingest helpers.";
  sealvec::register_secure_buffer(module);
  sealvec::register_search(module);
  sealvec::register_id_table(module);
  sealvec::register_filter(module);
  sealvec::register_ingest(module);
}
