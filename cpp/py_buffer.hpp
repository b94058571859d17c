// RAII holder for a Python buffer view. Acquire and destroy only while holding the GIL.
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <utility>

namespace sealvec {

class PyBufferView {
 public:
  PyBufferView() = default;
  PyBufferView(const PyBufferView&) = delete;
  PyBufferView& operator=(const PyBufferView&) = delete;
  PyBufferView(PyBufferView&& other) noexcept : view_(other.view_), held_(other.held_) {
    other.held_ = false;
  }
  PyBufferView& operator=(PyBufferView&& other) noexcept {
    if (this != &other) {
      release();
      view_ = other.view_;
      held_ = other.held_;
      other.held_ = false;
    }
    return *this;
  }
  ~PyBufferView() { release(); }

  // Takes a C-contiguous byte view of `object` (read-only, or writable when asked). On
  // failure raises ValueError that starts with `what` (for example "segments[3]") and keeps
  // the original reason.
  static PyBufferView acquire(pybind11::handle object, const std::string& what,
                              bool writable = false) {
    PyBufferView result;
    const int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(object.ptr(), &result.view_, flags) != 0) {
      std::string reason = "does not support the buffer protocol";
      if (PyErr_Occurred()) {
        pybind11::error_already_set original;  // fetches and clears the Python error
        reason = std::string(writable ? "is not a writable contiguous buffer ("
                                      : "is not a readable contiguous buffer (") +
                 original.what() + ")";
      }
      throw pybind11::value_error(what + " " + reason + ", got " +
                                  std::string(pybind11::str(pybind11::type::of(object))));
    }
    result.held_ = true;
    return result;
  }

  void release() {
    if (held_) {
      held_ = false;
      PyBuffer_Release(&view_);
    }
  }
  bool held() const { return held_; }
  const unsigned char* data() const { return static_cast<const unsigned char*>(view_.buf); }
  // Only for views acquired writable.
  unsigned char* mutable_data() const { return static_cast<unsigned char*>(view_.buf); }
  std::size_t size() const { return static_cast<std::size_t>(view_.len); }

 private:
  Py_buffer view_{};
  bool held_ = false;
};

}  // namespace sealvec
