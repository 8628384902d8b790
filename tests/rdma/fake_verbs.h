// FakeFabric: an in-process stand-in for RDMA NICs and the wire between them, implementing
// rdma::VerbsOps for tests. Bytes really move: SEND copies into the responder's posted receive
// buffer, RDMA WRITE copies into the responder's registered memory (after checking the rkey,
// the bounds and IBV_ACCESS_REMOTE_WRITE), and completions land in each device's CQ, whose
// completion fd is an eventfd so the transport's IORING_OP_POLL_ADD path runs unchanged.
//
// Modelled as the hardware does it:
//   - QP states RESET -> INIT -> RTR -> RTS -> ERR; a transition out of order fails, posting a
//     send before RTS fails, posting a receive in RESET fails; the fake records every state.
//   - RTR checks that the remote endpoint (QP number, LID, or GID with a GRH) exists.
//   - A SEND with no receive posted waits (RNR with rnr_retry = 7) and is retried when the
//     responder posts one; later work on that QP waits behind it (RC ordering). rnr_waits()
//     counts these.
//   - Errors: bad lkey/rkey/bounds -> protection/access error completions and the QP goes to
//     ERR; a QP in ERR completes everything outstanding, and everything posted later, with
//     IBV_WC_WR_FLUSH_ERR. CQ overrun makes PollCq fail.
// Not modelled: timing, packet loss and retransmission, PSN checks, MTU segmentation, memory
// pinning and RLIMIT_MEMLOCK accounting, async events, inline data, multiple SGEs, atomics,
// RDMA READ, shared receive queues.
//
// Deliveries happen synchronously inside PostSend/PostRecv. Thread-safe (one fabric mutex),
// but the tests drive every node from one thread.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "transport/rdma/verbs.h"

namespace dsm::rdma::testing {

enum class FakeQpState { kReset, kInit, kRtr, kRts, kError };
const char* FakeQpStateName(FakeQpState s);

class FakeDevice;

class FakeFabric {
 public:
  FakeFabric();
  ~FakeFabric();

  // A new device port; the fabric must outlive it.
  std::unique_ptr<VerbsOps> NewDevice(const std::string& name,
                                      LinkLayer link = LinkLayer::kInfiniBand);

  // The next SEND posted on `qpn` completes with `wc_status` and the QP goes to ERR (as after
  // a retry-exceeded timeout or a remote failure).
  void FailNextSend(uint32_t qpn, int wc_status);
  // Flips the byte at `offset` of the next SEND delivered from `qpn`.
  void CorruptNextSend(uint32_t qpn, size_t offset);
  // Moves `qpn` to ERR now (flushing its work), as a link failure seen by one side.
  void BreakQp(uint32_t qpn);

  std::vector<FakeQpState> StateHistory(uint32_t qpn) const;
  FakeQpState State(uint32_t qpn) const;
  uint32_t RemoteOf(uint32_t qpn) const;
  // Every QP number created so far, in creation order.
  std::vector<uint32_t> Qps() const;
  uint64_t rnr_waits() const;
  uint64_t sends_delivered() const;
  uint64_t writes_delivered() const;
  // Posts the transport made that real verbs would reject (send before RTS, and so on).
  uint64_t rejected_posts() const;

 private:
  friend class FakeDevice;
  struct Qp;
  struct Fault {
    int status = 0;
    bool corrupt = false;
    size_t offset = 0;
  };
  Qp* FindQp(uint32_t qpn) const;
  void Progress(Qp& qp);
  void SetError(Qp& qp);

  mutable std::recursive_mutex mu_;
  std::map<uint32_t, std::unique_ptr<Qp>> qps_;
  std::vector<uint32_t> order_;
  std::vector<FakeDevice*> devices_;
  std::map<uint32_t, Fault> faults_;
  uint32_t next_qpn_ = 0x100;
  uint16_t next_lid_ = 1;
  uint32_t next_key_ = 0x1000;
  uint64_t rnr_waits_ = 0, sends_ = 0, writes_ = 0, rejected_ = 0;
};

}  // namespace dsm::rdma::testing
