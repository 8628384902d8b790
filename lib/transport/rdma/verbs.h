// VerbsOps: the few libibverbs operations the RDMA transport uses, behind an interface so the
// logic above them (credits, buffer recycling, framing, the connection state machine) runs in
// tests against an in-process fake (tests/rdma/fake_verbs.h) that really moves bytes between
// "registered" buffers. The real implementation (OpenIbvDevice) calls libibverbs directly.
//
// One VerbsOps = one opened device port, one protection domain, one completion channel and one
// completion queue shared by every queue pair. QPs are reliable-connected and named by their
// QP number.
//
// Thread safety: none. Every call is made on the node's engine thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace dsm::rdma {

enum class LinkLayer : uint8_t { kInfiniBand = 1, kEthernet = 2 };

struct Gid {
  uint8_t raw[16] = {};
  bool IsZero() const;
  std::string ToString() const;  // "fe80:0000:...", as show_gids prints it
};

// The local port as the transport uses it.
struct PortInfo {
  std::string device;
  uint8_t port = 1;
  LinkLayer link_layer = LinkLayer::kInfiniBand;
  uint16_t lid = 0;
  int gid_index = -1;   // -1: no GID in use (InfiniBand inside one subnet, LID routing)
  Gid gid;
  uint32_t active_mtu = 0;  // enum ibv_mtu value (1 = 256 ... 5 = 4096)
};

// What a peer needs to address one of our QPs (exchanged during bootstrap).
struct QpEndpoint {
  uint32_t qp_num = 0;
  uint32_t psn = 0;     // first packet sequence number the QP sends
  uint16_t lid = 0;
  bool use_grh = false;  // route with a global header (RoCE always, IB with a GID index)
  Gid gid;
  uint32_t mtu = 0;     // the sender's active MTU (enum ibv_mtu); the path uses the minimum
};

struct MemoryRegion {
  uint8_t* addr = nullptr;
  size_t length = 0;
  uint32_t lkey = 0;
  uint32_t rkey = 0;
  uint64_t handle = 0;  // implementation's cookie
};

struct Sge {
  uint64_t addr = 0;
  uint32_t length = 0;
  uint32_t lkey = 0;
};

enum class WrOpcode : uint8_t { kSend = 1, kRdmaWrite = 2 };

struct SendWr {
  uint64_t wr_id = 0;
  WrOpcode opcode = WrOpcode::kSend;
  Sge sge;
  bool signaled = true;
  uint64_t remote_addr = 0;  // kRdmaWrite
  uint32_t rkey = 0;         // kRdmaWrite
};

enum class WcOpcode : uint8_t { kSend = 1, kRdmaWrite = 2, kRecv = 3, kOther = 4 };

// One work completion. `status` is an enum ibv_wc_status value (0 = IBV_WC_SUCCESS); for an
// error completion only wr_id and status are meaningful.
struct Completion {
  uint64_t wr_id = 0;
  int status = 0;
  WcOpcode opcode = WcOpcode::kOther;
  uint32_t byte_len = 0;
  uint32_t qp_num = 0;
  uint32_t vendor_err = 0;
};

// ibv_wc_status_str() for a status value.
const char* WcStatusName(int status);
inline constexpr int kWcSuccess = 0;
inline constexpr int kWcWrFlushErr = 5;  // IBV_WC_WR_FLUSH_ERR: the QP is in the error state

class VerbsOps {
 public:
  virtual ~VerbsOps() = default;

  virtual const PortInfo& port() const = 0;

  // Registers [addr, addr+len) for local access, and for remote RDMA WRITE if `remote_write`.
  virtual absl::StatusOr<MemoryRegion> RegisterMemory(void* addr, size_t len,
                                                      bool remote_write) = 0;
  virtual void DeregisterMemory(const MemoryRegion& mr) = 0;

  // The one completion queue (created once, before any QP).
  virtual absl::Status CreateCq(int entries) = 0;
  // A non-blocking fd that becomes readable after ArmCq() when a completion arrives
  // (the completion channel's fd). The caller polls it (IORING_OP_POLL_ADD).
  virtual int completion_fd() const = 0;
  // Requests one notification for the next completion (ibv_req_notify_cq).
  virtual absl::Status ArmCq() = 0;
  // Consumes and acknowledges pending notifications without blocking (ibv_get_cq_event until
  // EAGAIN, then ibv_ack_cq_events).
  virtual void ConsumeCqEvents() = 0;
  // Up to out.size() completions; returns how many, or an error if the CQ is broken.
  virtual absl::StatusOr<size_t> PollCq(absl::Span<Completion> out) = 0;

  // A new RC QP in the RESET state on the shared CQ; returns its QP number.
  virtual absl::StatusOr<uint32_t> CreateQp(uint32_t max_send_wr, uint32_t max_recv_wr) = 0;
  // RESET -> INIT (allows local write and remote write).
  virtual absl::Status ModifyToInit(uint32_t qpn) = 0;
  // INIT -> RTR, connected to `remote`.
  virtual absl::Status ModifyToRtr(uint32_t qpn, const QpEndpoint& remote) = 0;
  // RTR -> RTS, sending from `local_psn`.
  virtual absl::Status ModifyToRts(uint32_t qpn, uint32_t local_psn) = 0;
  // Any state -> ERR: outstanding work requests complete with IBV_WC_WR_FLUSH_ERR.
  virtual absl::Status ModifyToError(uint32_t qpn) = 0;
  virtual void DestroyQp(uint32_t qpn) = 0;

  virtual absl::Status PostRecv(uint32_t qpn, uint64_t wr_id, const Sge& sge) = 0;
  // Posts `wrs` as one chained list, executed in order.
  virtual absl::Status PostSend(uint32_t qpn, absl::Span<const SendWr> wrs) = 0;
};

// Opens `device` (empty: the first one) and `port`, picks the GID (`gid_index` < 0: automatic,
// see Options::rdma_gid_index), allocates a PD and a completion channel. Unavailable when no
// device exists.
absl::StatusOr<std::unique_ptr<VerbsOps>> OpenIbvDevice(const std::string& device, uint8_t port,
                                                        int gid_index);

// RLIMIT_MEMLOCK: registering `bytes` pins them. OK when the process has CAP_IPC_LOCK or the
// soft limit allows it; otherwise an actionable FailedPrecondition. `limit` = RLIM_INFINITY
// means unlimited.
absl::Status CheckMemlock(size_t bytes, uint64_t limit, bool has_cap_ipc_lock);
// The same with this process's limit and capabilities.
absl::Status CheckMemlock(size_t bytes);

}  // namespace dsm::rdma
