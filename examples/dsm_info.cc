// dsm_info: reports what this host offers dsm: kernel, userfaultfd (features and permissions),
// io_uring, RDMA devices/ports/GIDs and RLIMIT_MEMLOCK. Read-only; needs no privileges (it
// reports what an unprivileged run would hit). Calls the system directly, not libdsm.
//
// Needs: Linux with userfaultfd and io_uring for dsm itself; libibverbs (rdma-core) for the
// RDMA section. Always exits 0; unavailable features are reported, not fatal.
//
// Usage: dsm_info
#include <fcntl.h>
#if DSM_WITH_RDMA
#include <infiniband/verbs.h>
#endif
#include <liburing.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "transport/rdma/rdma_transport.h"

namespace {

// userfaultfd feature bits by number (uapi headers here are 6.1; later bits named by hand).
const char* const kUffdFeatures[] = {
    "PAGEFAULT_FLAG_WP", "EVENT_FORK",     "EVENT_REMAP",         "EVENT_REMOVE",
    "MISSING_HUGETLBFS", "MISSING_SHMEM",  "EVENT_UNMAP",         "SIGBUS",
    "THREAD_ID",         "MINOR_HUGETLBFS", "MINOR_SHMEM",        "EXACT_ADDRESS",
    "WP_HUGETLBFS_SHMEM", "WP_UNPOPULATED", "POISON",             "WP_ASYNC",
    "MOVE",
};
constexpr unsigned kUffdUserModeOnly = 1;  // UFFD_USER_MODE_ONLY (linux 5.11)

std::string ReadFirstLine(const char* path) {
  std::ifstream in(path);
  std::string s;
  if (!in || !std::getline(in, s)) return "";
  return s;
}

std::string Bytes(uint64_t b) {
  char buf[64];
  if (b >= (uint64_t{1} << 30)) {
    std::snprintf(buf, sizeof(buf), "%.1f GiB", b / double(uint64_t{1} << 30));
  } else if (b >= (1u << 20)) {
    std::snprintf(buf, sizeof(buf), "%.1f MiB", b / double(1u << 20));
  } else {
    std::snprintf(buf, sizeof(buf), "%" PRIu64 " KiB", b >> 10);
  }
  return buf;
}

bool HasCap(int cap) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      return (std::strtoull(line.c_str() + 7, nullptr, 16) >> cap) & 1;
    }
  }
  return false;
}

void Kernel() {
  utsname u{};
  uname(&u);
  std::printf("kernel\n  %s %s %s\n  running as uid %d%s\n\n", u.sysname, u.release, u.machine,
              static_cast<int>(geteuid()), geteuid() == 0 ? " (root)" : "");
}

// Returns the API features of `fd` after UFFDIO_API, or -1.
long long UffdFeatures(int fd) {
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = 0;  // the kernel answers with every feature it supports
  if (ioctl(fd, UFFDIO_API, &api) != 0) return -1;
  return static_cast<long long>(api.features);
}

void Userfaultfd() {
  std::printf("userfaultfd\n");
  std::string sysctl = ReadFirstLine("/proc/sys/vm/unprivileged_userfaultfd");
  std::printf("  vm.unprivileged_userfaultfd = %s\n", sysctl.empty() ? "(absent)" : sysctl.c_str());
  std::printf("  CAP_SYS_PTRACE: %s\n", HasCap(19) ? "yes" : "no");

  const char* how = nullptr;
  int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  int err = errno;
  if (fd >= 0) {
    how = "userfaultfd(2)";
  } else {
    std::printf("  userfaultfd(2): %s\n", std::strerror(err));
    fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | kUffdUserModeOnly));
    if (fd >= 0) how = "userfaultfd(2) with UFFD_USER_MODE_ONLY (user-space faults only)";
  }
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) {
    std::printf("  /dev/userfaultfd: %s\n", std::strerror(errno));
  } else {
    std::printf("  /dev/userfaultfd: accessible\n");
    if (fd < 0) {
      fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
      if (fd >= 0) how = "/dev/userfaultfd (USERFAULTFD_IOC_NEW)";
    }
    close(dev);
  }
  if (fd < 0) {
    std::printf("  status: UNAVAILABLE to this process. Run as root, or set "
                "vm.unprivileged_userfaultfd=1, or grant access to /dev/userfaultfd "
                "(kernel >= 6.1).\n\n");
    return;
  }
  std::printf("  opened via: %s\n", how);
  long long f = UffdFeatures(fd);
  close(fd);
  if (f < 0) {
    std::printf("  UFFDIO_API failed: %s\n\n", std::strerror(errno));
    return;
  }
  std::printf("  API features: 0x%llx\n   ", f);
  for (unsigned bit = 0; bit < 64; ++bit) {
    if (!((f >> bit) & 1)) continue;
    if (bit < sizeof(kUffdFeatures) / sizeof(kUffdFeatures[0])) {
      std::printf(" %s", kUffdFeatures[bit]);
    } else {
      std::printf(" bit%u", bit);
    }
  }
  std::printf("\n  dsm needs: PAGEFAULT_FLAG_WP (write-protect faults) %s; MOVE (batched "
              "installs) %s\n\n",
              (f & 1) ? "present" : "MISSING", ((f >> 16) & 1) ? "present" : "absent (COPY used)");
}

void IoUring() {
  std::printf("io_uring\n");
  std::string disabled = ReadFirstLine("/proc/sys/kernel/io_uring_disabled");
  if (!disabled.empty()) std::printf("  kernel.io_uring_disabled = %s\n", disabled.c_str());
  io_uring ring{};
  int rc = io_uring_queue_init(8, &ring, 0);
  if (rc < 0) {
    std::printf("  io_uring_queue_init: %s (%s)\n\n", std::strerror(-rc),
                rc == -EPERM ? "disabled by sysctl or seccomp" : "unavailable");
    return;
  }
  std::printf("  io_uring_queue_init: ok\n");
  io_uring_probe* probe = io_uring_get_probe_ring(&ring);
  if (probe != nullptr) {
    struct {
      int op;
      const char* name;
    } ops[] = {{IORING_OP_POLL_ADD, "POLL_ADD"}, {IORING_OP_ACCEPT, "ACCEPT"},
               {IORING_OP_CONNECT, "CONNECT"},   {IORING_OP_SEND, "SEND"},
               {IORING_OP_RECV, "RECV"},         {IORING_OP_READ, "READ"},
               {IORING_OP_WRITE, "WRITE"},       {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"}};
    std::printf("  opcodes dsm uses:");
    for (auto& o : ops) {
      std::printf(" %s%s", o.name, io_uring_opcode_supported(probe, o.op) ? "" : "(MISSING)");
    }
    std::printf("\n");
    io_uring_free_probe(probe);
  }
  io_uring_queue_exit(&ring);
  std::printf("\n");
}

#if DSM_WITH_RDMA
const char* LinkLayerName(uint8_t ll) {
  switch (ll) {
    case IBV_LINK_LAYER_INFINIBAND: return "InfiniBand";
    case IBV_LINK_LAYER_ETHERNET: return "Ethernet (RoCE)";
    default: return "unspecified";
  }
}

const char* GidTypeName(uint32_t t) {
  switch (t) {
    case IBV_GID_TYPE_IB: return "IB";
    case IBV_GID_TYPE_ROCE_V1: return "RoCE v1";
    case IBV_GID_TYPE_ROCE_V2: return "RoCE v2";
    default: return "?";
  }
}

void Rdma() {
  std::printf("RDMA (libibverbs)\n");
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr || n == 0) {
    std::printf("  no RDMA device: ibv_get_device_list found none%s\n"
                "  (the RDMA transport needs an InfiniBand or RoCE NIC with its kernel driver "
                "and rdma-core's provider; see docs/RDMA.md)\n\n",
                list == nullptr ? (std::string(" (") + std::strerror(errno) + ")").c_str() : "");
    if (list != nullptr) ibv_free_device_list(list);
    return;
  }
  for (int i = 0; i < n; ++i) {
    const char* name = ibv_get_device_name(list[i]);
    ibv_context* ctx = ibv_open_device(list[i]);
    if (ctx == nullptr) {
      std::printf("  %s: cannot open: %s\n", name, std::strerror(errno));
      continue;
    }
    ibv_device_attr da{};
    if (ibv_query_device(ctx, &da) != 0) {
      std::printf("  %s: ibv_query_device failed\n", name);
      ibv_close_device(ctx);
      continue;
    }
    std::printf("  %s: fw %s, %d port(s), max_qp %d, max_mr_size %s\n", name, da.fw_ver,
                da.phys_port_cnt, da.max_qp, Bytes(da.max_mr_size).c_str());
    for (uint8_t port = 1; port <= da.phys_port_cnt; ++port) {
      ibv_port_attr pa{};
      if (ibv_query_port(ctx, port, &pa) != 0) continue;
      std::printf("    port %d: %s, link layer %s, lid %d, active MTU %d\n", port,
                  ibv_port_state_str(pa.state), LinkLayerName(pa.link_layer), pa.lid,
                  128 << pa.active_mtu);
      for (int g = 0; g < pa.gid_tbl_len; ++g) {
        ibv_gid_entry e{};
        if (ibv_query_gid_ex(ctx, port, g, &e, 0) != 0) continue;
        bool zero = true;
        for (uint8_t b : e.gid.raw) zero = zero && b == 0;
        if (zero) continue;
        std::printf("      gid[%d] ", g);
        for (int k = 0; k < 16; k += 2) {
          std::printf("%s%02x%02x", k ? ":" : "", e.gid.raw[k], e.gid.raw[k + 1]);
        }
        std::printf("  %s\n", GidTypeName(e.gid_type));
      }
    }
    ibv_close_device(ctx);
  }
  ibv_free_device_list(list);
  std::printf("\n");
}

#else
void Rdma() {
  std::printf("RDMA\n  not built in: this dsm was configured with DSM_WITH_RDMA=OFF (no "
              "libibverbs); the RDMA transport is unavailable\n\n");
}
#endif

void Memlock() {
  rlimit rl{};
  getrlimit(RLIMIT_MEMLOCK, &rl);
  auto fmt = [](rlim_t v) { return v == RLIM_INFINITY ? std::string("unlimited") : Bytes(v); };
  std::printf("RLIMIT_MEMLOCK\n  soft %s, hard %s; CAP_IPC_LOCK: %s\n", fmt(rl.rlim_cur).c_str(),
              fmt(rl.rlim_max).c_str(), HasCap(14) ? "yes (limit does not apply)" : "no");
  const dsm::RdmaTuning t;
  for (size_t nodes : {2, 4, 8}) {
    const uint64_t need = dsm::RdmaRegisteredBytes(t, nodes);
    const bool ok = HasCap(14) || rl.rlim_cur == RLIM_INFINITY || need <= rl.rlim_cur;
    std::printf("  RDMA transport, %zu nodes: registers %s per node%s\n", nodes,
                Bytes(need).c_str(),
                ok ? "" : "  -> too low: ulimit -l unlimited (or LimitMEMLOCK=infinity)");
  }
}

}  // namespace

int main() {
  Kernel();
  Userfaultfd();
  IoUring();
  Rdma();
  Memlock();
  return 0;
}
