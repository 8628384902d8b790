// RdmaTransport: the Transport over libibverbs reliable-connected queue pairs.
//
//   auto t = dsm::CreateRdmaTransport(options);     // options.transport == kRdma
//   t.value()->Start(loop, handler);
//
// One RC QP per peer, all on one completion queue. Set-up runs over a TCP socket per pair (the
// higher node id connects to the lower one's `peers[]` address): each side sends a fixed
// 96-byte handshake (node id, cluster size, QP number, PSN, LID, GID, MTU, the address and rkey
// of the staging slots it reserved for this peer, its buffer geometry), moves its QP
// INIT -> RTR -> RTS, and then both exchange a 4-byte "ready" so that neither sends before the
// other can receive. The first message on the QP is kHello; OnPeerUp follows its arrival. The
// TCP socket then stays open with a pending receive: its EOF is how a vanished peer process is
// noticed (an RC QP alone only finds out on its next send, after retry_cnt time-outs).
//
// Data path (framing.h, flow_control.h): a message whose encoded frame fits a control buffer
// goes as one SEND; a larger one (page runs) is RDMA-written into a staging slot the peer
// registered for us, followed on the same QP by a SEND carrying its wire header. Payloads never
// land in application (userfaultfd-registered) memory: the node copies them out of the decoded
// Message and installs them with UFFDIO_COPY. Credits are piggybacked or sent as credit-only
// messages; a sender without credits queues (per-pair FIFO is kept).
//
// Completions: the completion channel's fd is polled with IORING_OP_POLL_ADD on the node's
// EventLoop; its completion re-arms the CQ and drains it with ibv_poll_cq on the engine
// thread. No extra thread and no hand-off.
//
// Failure: an error completion, a message that fails validation, a protocol violation of the
// credit scheme, or EOF on the set-up socket marks the peer down (OnPeerDown once; its QP is
// moved to ERR and later Send()s to it are dropped). Peers not up within connect_timeout are
// reported down. Peer up/down state and incarnations are kept in a PeerTable (peer_table.h);
// the Hello carries this node's incarnation. A peer declared down does not come back over RDMA
// (its QP and registered buffers are gone): its set-up connection is refused with that reason.
//
// Threading: as Transport (transport.h): every call on the engine thread. The EventLoop must
// outlive the transport; Shutdown() (or the destructor) drains this transport's ring operations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "dsm/options.h"
#include "transport/rdma/verbs.h"
#include "transport/transport.h"

namespace dsm {

// Buffer geometry; both ends of a connection must agree (checked in the handshake).
struct RdmaTuning {
  // Receive buffers posted per peer for normal messages (= the peer's send credits).
  uint32_t recv_credits = 64;
  // Extra receive buffers per peer for credit-only messages.
  uint32_t ctrl_reserve = 2;
  // Bytes per send/receive buffer: the RDMA header plus an inline frame. Frames longer than
  // buf_size - 16 are staged.
  uint32_t buf_size = 1024;
  // Staging slots per peer and direction, kMaxPayload bytes each.
  uint32_t staging_slots = 4;
  // Receive credits owed before a credit-only message is sent (when nothing else goes out).
  uint32_t credit_threshold = 16;
};

// A staging slot holds one message payload; page-aligned.
inline constexpr size_t kRdmaSlotSize = (kMaxPayload + 4095) / 4096 * 4096;

// Bytes the transport registers (pins) for a cluster of `cluster_size` nodes: per peer, the
// send and receive buffers and the staging slots of both directions.
inline size_t RdmaRegisteredBytes(const RdmaTuning& t, size_t cluster_size) {
  if (cluster_size < 2) return 0;
  const size_t bufs = size_t{t.recv_credits} + t.ctrl_reserve;
  return (cluster_size - 1) * (2 * bufs * t.buf_size + 2 * size_t{t.staging_slots} * kRdmaSlotSize);
}

// Extra counters beyond Transport::Counters (for tests and Stats).
struct RdmaCounters {
  uint64_t inline_sent = 0;
  uint64_t staged_sent = 0;
  uint64_t credit_messages_sent = 0;
  uint64_t credit_stalls = 0;  // times a queued message waited for credits or buffers
  uint64_t error_completions = 0;
};

// Opens the device named by options (rdma_device/rdma_port/rdma_gid_index), checks
// RLIMIT_MEMLOCK, and builds the transport.
absl::StatusOr<std::unique_ptr<Transport>> CreateRdmaTransport(const Options& options);

// The same over any VerbsOps (tests pass a fake).
absl::StatusOr<std::unique_ptr<Transport>> CreateRdmaTransportWithVerbs(
    const Options& options, const RdmaTuning& tuning, std::unique_ptr<rdma::VerbsOps> verbs);

// RdmaCounters of a transport made by the functions above.
RdmaCounters GetRdmaCounters(const Transport& t);

}  // namespace dsm
