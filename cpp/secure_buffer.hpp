// SecureBuffer: bytes in locked, non-dumpable, guard-paged memory, exposed through the buffer
// protocol with an export count so the memory is wiped only after the last view is dropped.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

namespace sealvec {

enum class MemoryLockPolicy { Required, BestEffort };

// Locking was refused under MemoryLockPolicy::Required; what() is the message for the user.
class LockRefused : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class SecureBuffer {
 public:
  SecureBuffer(std::size_t nbytes, MemoryLockPolicy policy);
  ~SecureBuffer();
  SecureBuffer(const SecureBuffer&) = delete;
  SecureBuffer& operator=(const SecureBuffer&) = delete;

  void seal();
  void release();

  std::size_t nbytes() const { return nbytes_; }
  bool locked() const { return locked_; }
  bool sealed() const { return sealed_; }
  bool released() const { return released_; }
  bool wipe_on_fork() const { return wipe_on_fork_; }
  std::size_t exports() const { return exports_; }
  // The bytes, for native code filling the buffer before seal() (nullptr when empty).
  unsigned char* data() { return data_; }
  // Why the pages are not locked (best-effort only); empty when they are.
  const std::string& unlocked_reason() const { return unlocked_reason_; }

  // Buffer-protocol slots (called with the GIL held).
  int get_buffer(PyObject* owner, Py_buffer* view, int flags);
  void release_buffer(Py_buffer* view);

 private:
  void wipe_and_unmap() noexcept;

  std::size_t nbytes_ = 0;
  std::size_t data_bytes_ = 0;  // nbytes rounded up to whole pages
  std::size_t page_bytes_ = 0;
  std::size_t mapping_bytes_ = 0;  // the whole mapping: guards, alignment slack, data
  unsigned char* mapping_ = nullptr;  // guard page + data pages + guard page
  unsigned char* data_ = nullptr;
  bool locked_ = false;
  bool sealed_ = false;
  bool released_ = false;
  bool wipe_on_fork_ = false;
  bool wiped_ = false;
  std::size_t exports_ = 0;
  std::size_t writable_exports_ = 0;
  std::string unlocked_reason_;
};

// "required" or "best_effort"; anything else is a ValueError naming memory_lock.
MemoryLockPolicy parse_memory_lock(const std::string& memory_lock);

// Constructs a SecureBuffer with the GIL released; raises sealvec.errors.MemoryLockError
// on a refused lock and logs the best-effort warning (call with the GIL held).
std::unique_ptr<SecureBuffer> make_secure_buffer(std::size_t nbytes, MemoryLockPolicy policy);

// Bytes currently mlocked by live SecureBuffers in this process.
std::uint64_t locked_bytes();

void register_secure_buffer(pybind11::module_& module);

}  // namespace sealvec
