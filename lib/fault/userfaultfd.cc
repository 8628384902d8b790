#include "fault/userfaultfd.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "fault/uffd_compat.h"

namespace dsm {
namespace {

constexpr uint64_t kPageMask = ~static_cast<uint64_t>(4095);

// Bounds the retries of an ioctl that keeps answering EAGAIN with no progress (the mm is
// changing under a fork or remap event). Progress resets the count.
constexpr int kMaxStalledRetries = 1000;

std::string UnprivilegedSysctl() {
  std::ifstream f("/proc/sys/vm/unprivileged_userfaultfd");
  std::string v;
  if (!(f >> v)) return "unknown";
  return v;
}

absl::Status PermissionError(int sys_errno, int dev_errno) {
  return absl::PermissionDeniedError(absl::StrCat(
      "userfaultfd: permission denied: run as root, or set sysctl vm.unprivileged_userfaultfd=1, "
      "or grant CAP_SYS_PTRACE, or give read/write access to /dev/userfaultfd (userfaultfd(2): ",
      std::strerror(sys_errno), "; /dev/userfaultfd: ", std::strerror(dev_errno),
      "; vm.unprivileged_userfaultfd=", UnprivilegedSysctl(),
      "). UFFD_USER_MODE_ONLY is not used: it would make kernel accesses to mapped regions "
      "(read(2), io_uring) fail with EFAULT"));
}

// Opens a raw userfaultfd: the syscall, then /dev/userfaultfd (Linux 6.1) when the syscall is
// refused to unprivileged callers.
absl::StatusOr<int> OpenRaw() {
  constexpr int kFlags = O_CLOEXEC | O_NONBLOCK;
  int fd = static_cast<int>(syscall(SYS_userfaultfd, kFlags));
  if (fd >= 0) return fd;
  const int sys_errno = errno;
  if (sys_errno == ENOSYS) {
    return absl::UnimplementedError(
        "userfaultfd(2): ENOSYS: this kernel was built without CONFIG_USERFAULTFD (or a seccomp "
        "filter blocks the syscall); dsm needs it");
  }
  if (sys_errno != EPERM) return absl::ErrnoToStatus(sys_errno, "userfaultfd(2)");

  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) return PermissionError(sys_errno, errno);
  fd = ioctl(dev, USERFAULTFD_IOC_NEW, kFlags);
  const int dev_errno = errno;
  close(dev);
  if (fd < 0) return PermissionError(sys_errno, dev_errno);
  return fd;
}

// UFFDIO_API may be issued once per descriptor and, since Linux 6.10, fails with EINVAL when
// asked for a feature the kernel lacks. So the available set is read on a throwaway descriptor
// (features = 0: the kernel answers with every feature it offers) and the real descriptor asks
// for exactly what dsm wants from that set.
absl::StatusOr<uint64_t> ProbeFeatures() {
  absl::StatusOr<int> fd = OpenRaw();
  if (!fd.ok()) return fd.status();
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = 0;
  const int rc = ioctl(*fd, UFFDIO_API, &api);
  const int err = errno;
  close(*fd);
  if (rc != 0) return absl::ErrnoToStatus(err, "UFFDIO_API (probe)");
  return static_cast<uint64_t>(api.features);
}

bool HasIoctl(uint64_t ioctls, int nr) { return (ioctls & (uint64_t{1} << nr)) != 0; }

}  // namespace

absl::StatusOr<std::unique_ptr<Userfaultfd>> Userfaultfd::Open() {
  absl::StatusOr<uint64_t> offered = ProbeFeatures();
  if (!offered.ok()) return offered.status();
  if ((*offered & UFFD_FEATURE_PAGEFAULT_FLAG_WP) == 0) {
    return absl::FailedPreconditionError(
        "userfaultfd: the kernel offers no write-protect faults (UFFD_FEATURE_PAGEFAULT_FLAG_WP, "
        "Linux 5.7+ with CONFIG_HAVE_ARCH_USERFAULTFD_WP); dsm needs them to catch writes to "
        "shared pages");
  }
  uint64_t want = UFFD_FEATURE_PAGEFAULT_FLAG_WP;
  for (uint64_t optional : {uint64_t{UFFD_FEATURE_POISON}, uint64_t{UFFD_FEATURE_MOVE},
                            uint64_t{UFFD_FEATURE_WP_UNPOPULATED}}) {
    want |= *offered & optional;
  }

  absl::StatusOr<int> fd = OpenRaw();
  if (!fd.ok()) return fd.status();
  std::unique_ptr<Userfaultfd> uffd(new Userfaultfd(*fd));
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = want;
  if (ioctl(uffd->fd_, UFFDIO_API, &api) != 0) return absl::ErrnoToStatus(errno, "UFFDIO_API");
  const uint64_t got = api.features;
  uffd->features_.write_protect = (got & UFFD_FEATURE_PAGEFAULT_FLAG_WP) != 0;
  uffd->features_.poison = (want & UFFD_FEATURE_POISON) != 0 && (got & UFFD_FEATURE_POISON) != 0;
  uffd->features_.move = (want & UFFD_FEATURE_MOVE) != 0 && (got & UFFD_FEATURE_MOVE) != 0;
  uffd->features_.wp_unpopulated =
      (want & UFFD_FEATURE_WP_UNPOPULATED) != 0 && (got & UFFD_FEATURE_WP_UNPOPULATED) != 0;

  // Prove MISSING + WP registration on anonymous memory with the ioctls the fault path uses.
  void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) return absl::ErrnoToStatus(errno, "mmap (userfaultfd probe)");
  absl::Status st = uffd->Register(page, 4096);
  if (st.ok()) st = uffd->Unregister(page, 4096);
  munmap(page, 4096);
  if (!st.ok()) return st;

  DSM_LOG(INFO) << "userfaultfd: fd " << uffd->fd_ << " features 0x" << std::hex << got
                << std::dec << " poison=" << uffd->features_.poison
                << " move=" << uffd->features_.move
                << " wp_unpopulated=" << uffd->features_.wp_unpopulated;
  return uffd;
}

Userfaultfd::~Userfaultfd() {
  if (fd_ >= 0) close(fd_);
}

absl::Status Userfaultfd::Register(void* addr, size_t len) {
  uffdio_register reg{};
  reg.range.start = reinterpret_cast<uintptr_t>(addr);
  reg.range.len = len;
  reg.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
  if (ioctl(fd_, UFFDIO_REGISTER, &reg) != 0) {
    const int err = errno;
    if (err == EINVAL) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "UFFDIO_REGISTER [%p, +%#x): EINVAL: range not page-aligned, not mapped, or not "
          "anonymous/shmem memory",
          addr, len));
    }
    return absl::ErrnoToStatus(err, "UFFDIO_REGISTER");
  }
  const uint64_t need[] = {_UFFDIO_COPY, _UFFDIO_WRITEPROTECT, _UFFDIO_WAKE};
  for (uint64_t nr : need) {
    if (!HasIoctl(reg.ioctls, static_cast<int>(nr))) {
      (void)Unregister(addr, len);
      return absl::FailedPreconditionError(absl::StrFormat(
          "UFFDIO_REGISTER [%p, +%#x): the range lacks ioctl %d (offered ioctls %#x); dsm needs "
          "COPY, WRITEPROTECT and WAKE (write-protect on anonymous memory, Linux 5.7+)",
          addr, len, static_cast<int>(nr), static_cast<uint64_t>(reg.ioctls)));
    }
  }
  return absl::OkStatus();
}

absl::Status Userfaultfd::Unregister(void* addr, size_t len) {
  uffdio_range range{};
  range.start = reinterpret_cast<uintptr_t>(addr);
  range.len = len;
  if (ioctl(fd_, UFFDIO_UNREGISTER, &range) != 0) {
    return absl::ErrnoToStatus(errno, "UFFDIO_UNREGISTER");
  }
  return absl::OkStatus();
}

absl::Status Userfaultfd::Copy(void* dst, const void* src, size_t len, bool write_protect,
                               bool dont_wake) {
  uint64_t done = 0;
  int stalled = 0;
  while (done < len) {
    uffdio_copy copy{};
    copy.dst = reinterpret_cast<uintptr_t>(dst) + done;
    copy.src = reinterpret_cast<uintptr_t>(src) + done;
    copy.len = len - done;
    copy.mode = (write_protect ? UFFDIO_COPY_MODE_WP : 0) | (dont_wake ? UFFDIO_COPY_MODE_DONTWAKE : 0);
    if (ioctl(fd_, UFFDIO_COPY, &copy) == 0) return absl::OkStatus();
    const int err = errno;
    if (err == EAGAIN) {
      // Partial copy (copy.copy > 0 bytes done) or the mm changed under us (-EAGAIN).
      if (copy.copy > 0) {
        done += static_cast<uint64_t>(copy.copy);
        stalled = 0;
      } else if (++stalled > kMaxStalledRetries) {
        return absl::ErrnoToStatus(err, "UFFDIO_COPY");
      } else {
        sched_yield();
      }
      continue;
    }
    if (err == EEXIST) {
      return absl::AlreadyExistsError(
          absl::StrFormat("UFFDIO_COPY: page at %#x is already mapped", copy.dst));
    }
    return absl::ErrnoToStatus(err, "UFFDIO_COPY");
  }
  return absl::OkStatus();
}

absl::Status Userfaultfd::WriteProtect(void* addr, size_t len, bool protect) {
  int stalled = 0;
  for (;;) {
    uffdio_writeprotect wp{};
    wp.range.start = reinterpret_cast<uintptr_t>(addr);
    wp.range.len = len;
    wp.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0;
    if (ioctl(fd_, UFFDIO_WRITEPROTECT, &wp) == 0) return absl::OkStatus();
    const int err = errno;
    if (err == EAGAIN && ++stalled <= kMaxStalledRetries) {
      sched_yield();
      continue;
    }
    return absl::ErrnoToStatus(err, "UFFDIO_WRITEPROTECT");
  }
}

absl::Status Userfaultfd::Wake(void* addr, size_t len) {
  uffdio_range range{};
  range.start = reinterpret_cast<uintptr_t>(addr);
  range.len = len;
  if (ioctl(fd_, UFFDIO_WAKE, &range) != 0) return absl::ErrnoToStatus(errno, "UFFDIO_WAKE");
  return absl::OkStatus();
}

absl::Status Userfaultfd::Poison(void* addr, size_t len, bool dont_wake) {
  if (!features_.poison) {
    return absl::UnimplementedError("UFFDIO_POISON: not offered by this kernel (Linux 6.6+)");
  }
  uint64_t done = 0;
  int stalled = 0;
  while (done < len) {
    uffdio_poison poison{};
    poison.range.start = reinterpret_cast<uintptr_t>(addr) + done;
    poison.range.len = len - done;
    poison.mode = dont_wake ? UFFDIO_POISON_MODE_DONTWAKE : 0;
    if (ioctl(fd_, UFFDIO_POISON, &poison) == 0) return absl::OkStatus();
    const int err = errno;
    if (err == EAGAIN) {
      if (poison.updated > 0) {
        done += static_cast<uint64_t>(poison.updated);
        stalled = 0;
      } else if (++stalled > kMaxStalledRetries) {
        return absl::ErrnoToStatus(err, "UFFDIO_POISON");
      } else {
        sched_yield();
      }
      continue;
    }
    if (err == EEXIST) {
      return absl::AlreadyExistsError(absl::StrFormat(
          "UFFDIO_POISON: page at %#x is mapped; Zap it first", poison.range.start));
    }
    return absl::ErrnoToStatus(err, "UFFDIO_POISON");
  }
  return absl::OkStatus();
}

absl::Status Userfaultfd::Zap(void* addr, size_t len) {
  if (madvise(addr, len, MADV_DONTNEED) != 0) {
    return absl::ErrnoToStatus(errno, "madvise(MADV_DONTNEED)");
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> Userfaultfd::ReadEvents(absl::Span<FaultEvent> out) {
  constexpr size_t kChunk = 64;
  uffd_msg msgs[kChunk];
  size_t n = 0;
  while (n < out.size()) {
    const size_t want = std::min(kChunk, out.size() - n);
    const ssize_t r = read(fd_, msgs, want * sizeof(uffd_msg));
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      return absl::ErrnoToStatus(errno, "read(userfaultfd)");
    }
    const size_t got = static_cast<size_t>(r) / sizeof(uffd_msg);
    for (size_t i = 0; i < got; ++i) {
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      const uint64_t flags = msgs[i].arg.pagefault.flags;
      FaultEvent& e = out[n++];
      e.kind = (flags & UFFD_PAGEFAULT_FLAG_WP) ? FaultEvent::Kind::kWriteProtect
                                                : FaultEvent::Kind::kMissing;
      e.write = (flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0;
      e.address = static_cast<uintptr_t>(msgs[i].arg.pagefault.address & kPageMask);
    }
    if (got < want) break;
  }
  return n;
}

}  // namespace dsm
