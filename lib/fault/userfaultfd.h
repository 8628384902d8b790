// Userfaultfd: a userfaultfd file descriptor and the few ioctls the fault path uses.
//
// Open() probes the kernel: the API handshake, MISSING + write-protect support on anonymous
// memory, and the optional features (POISON for lost pages, MOVE for batched installs). It
// fails with an actionable message (which sysctl, capability or device to use) when
// userfaultfd is unavailable to this process.
//
// The uapi headers on Debian 12 are from Linux 6.1; newer constants are defined in
// fault/uffd_compat.h behind #ifndef.
//
// Thread safety: the ioctls may be called from any thread; ReadEvents() from one thread.
// Never touch registered memory from the thread that serves faults except through these calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace dsm {

struct FaultEvent {
  enum class Kind : uint8_t { kMissing, kWriteProtect };
  Kind kind;
  bool write;     // the access was a store
  uintptr_t address;  // page-aligned
};

struct UffdFeatures {
  bool write_protect = false;  // UFFD_FEATURE_PAGEFAULT_FLAG_WP on anonymous memory
  bool poison = false;         // UFFDIO_POISON (Linux 6.6)
  bool move = false;           // UFFDIO_MOVE (Linux 6.8)
  bool wp_unpopulated = false; // UFFD_FEATURE_WP_UNPOPULATED (Linux 6.4)
};

class Userfaultfd {
 public:
  // Opens a non-blocking, close-on-exec userfaultfd with the features dsm needs.
  static absl::StatusOr<std::unique_ptr<Userfaultfd>> Open();
  ~Userfaultfd();
  Userfaultfd(const Userfaultfd&) = delete;
  Userfaultfd& operator=(const Userfaultfd&) = delete;

  int fd() const { return fd_; }
  const UffdFeatures& features() const { return features_; }

  // Registers [addr, addr+len) for MISSING and write-protect faults (page-aligned).
  absl::Status Register(void* addr, size_t len);
  absl::Status Unregister(void* addr, size_t len);

  // Installs `len` bytes from `src` at unmapped `dst`, write-protected if `write_protect`.
  // Wakes waiters unless `dont_wake`. AlreadyExistsError if a page is already mapped (the
  // pages before it are installed and woken; waiters on that page are not woken: Wake()).
  // Partial copies and mmap changes (EAGAIN) are retried internally.
  absl::Status Copy(void* dst, const void* src, size_t len, bool write_protect,
                    bool dont_wake = false);
  // Sets or clears write protection on mapped pages; clearing wakes waiters.
  absl::Status WriteProtect(void* addr, size_t len, bool protect);
  absl::Status Wake(void* addr, size_t len);
  // Makes later accesses to [addr, addr+len) raise SIGBUS (UFFDIO_POISON). Falls back to
  // UnimplementedError when the kernel lacks it. Only unmapped pages can be poisoned
  // (AlreadyExistsError otherwise): Zap() first. `dont_wake`: threads blocked on the range
  // stay blocked until Wake() (they then retry and get SIGBUS).
  absl::Status Poison(void* addr, size_t len, bool dont_wake = false);
  // Unmaps pages (MADV_DONTNEED): the next access, read or write, raises a MISSING fault, and
  // no write-protect state survives (tests/fault pin this down on anonymous memory).
  absl::Status Zap(void* addr, size_t len);

  // Reads up to out.size() pending fault events without blocking (0 when none). Events other
  // than page faults (none are requested) are dropped. Several threads faulting on one page
  // yield one event each: serve the first, and answer the rest with Wake() when Copy() says
  // AlreadyExists.
  absl::StatusOr<size_t> ReadEvents(absl::Span<FaultEvent> out);

 private:
  explicit Userfaultfd(int fd) : fd_(fd) {}
  int fd_;
  UffdFeatures features_;
};

}  // namespace dsm
