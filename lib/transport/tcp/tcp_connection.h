// TcpConnection: one TCP socket driven by io_uring operations on the owner's EventLoop.
// Receives into a fixed buffer (several max frames) and cuts it into frames with
// PeekFrameLength; sends from a per-connection queue with one IORING_OP_SENDMSG in flight at
// a time (small frames are coalesced into one buffer, large payloads are sent from the
// Message's own vector by scatter-gather, partial sends resume where they stopped).
//
// Lifetime: owned by shared_ptr. Every ring operation in flight holds a reference to the
// connection, so no completion can reach freed memory even if the owner is gone; Detach()
// stops all callbacks. Close() shuts the socket down and cancels what is in flight; the fd is
// closed when the last operation completed (so its number cannot be reused while the ring
// still refers to it).
//
// Threading: loop thread only.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "transport/admission/admission.h"
#include "transport/event_loop.h"
#include "protocol/message.h"

namespace dsm {

class TcpConnection : public std::enable_shared_from_this<TcpConnection> {
 public:
  class Owner {
   public:
    // Outbound connect finished: res 0, or -errno.
    virtual void OnConnected(TcpConnection* c, int res) = 0;
    // One whole frame whose header passed PeekFrameLength. May Close() the connection.
    virtual void OnFrame(TcpConnection* c, absl::Span<const uint8_t> frame) = 0;
    // The connection failed (EOF, socket error, invalid header). It is already closed.
    // `bad` = the peer sent something invalid.
    virtual void OnFailed(TcpConnection* c, const absl::Status& why, bool bad) = 0;
    // The admission handshake (`admission` set) finished: OK (the connection is open, the
    // frame stream follows; may Close()), or failed (the connection is already closed).
    virtual void OnAdmission(TcpConnection* c, const absl::Status& result) = 0;

   protected:
    ~Owner() = default;
  };

  // Takes ownership of `fd` (a connected or unconnected TCP socket).
  static std::shared_ptr<TcpConnection> Create(EventLoop* loop, Owner* owner, int fd,
                                               size_t cluster_size);
  ~TcpConnection();
  TcpConnection(const TcpConnection&) = delete;
  TcpConnection& operator=(const TcpConnection&) = delete;

  void StartConnect(const sockaddr_in& addr);
  void StartReceiving();
  // Queues one encoded frame (header now, payload moved out of `m` when large).
  void Enqueue(Message&& m);
  // Queues raw bytes (the admission handshake's).
  void EnqueueRaw(absl::Span<const uint8_t> bytes);

  // How long the output queue has been over `limit` bytes with the kernel accepting none of
  // it (zero while it is under, or moving). Reads the clock only when over the limit.
  absl::Duration StalledOver(size_t limit);

  // Output: bytes queued or in flight.
  size_t queued_bytes() const { return queued_bytes_; }
  bool rx_eof() const { return rx_eof_; }
  // Half-closes for a graceful shutdown: FIN after what was sent; keeps receiving (frames
  // are still handed to the owner until EOF).
  void ShutdownWrite();
  // The same once everything queued now has been sent (a refusal's last words).
  void ShutdownWriteWhenSent();
  // Closes: no further callbacks; pending output is dropped.
  void Close();
  bool closed() const { return closed_; }
  // Stops every callback (the owner is going away). Implies Close().
  void Detach();
  // No ring operation in flight and the fd is closed.
  bool finished() const { return closed_ && inflight_ == 0 && fd_ < 0; }

  // Owner's bookkeeping, not used by the connection.
  NodeId peer = 0;
  bool peer_known = false;  // outbound: the expected peer; inbound: set by the owner at Hello
  bool outbound = false;
  bool hello_done = false;
  // Its Hello was refused (a refusal Hello is on its way): later frames are ignored until the
  // peer closes or the handshake timer does.
  bool refused = false;
  // Set before StartReceiving() on an authenticated cluster: received bytes go to it until
  // it is done; frames only after.
  std::unique_ptr<admission::Handshake> admission;
  bool admitted() const { return admission == nullptr || admission->done(); }
  uint32_t source_ipv4 = 0;  // inbound: the peer's address (host byte order)

 private:
  class ConnOp;
  enum class OpKind { kConnect, kRecv, kSend };

  TcpConnection(EventLoop* loop, Owner* owner, int fd, size_t cluster_size);
  void Arm(ConnOp* op);
  void OnOpComplete(OpKind kind, int res);
  void OnRecv(int res);
  void OnSend(int res);
  void ArmRecv();
  void MaybeSend();
  void Fail(const absl::Status& why, bool bad);
  void MaybeFinish();
  void AppendSmall(const uint8_t* data, size_t len);

  EventLoop* const loop_;
  Owner* owner_;
  int fd_;
  const size_t cluster_size_;
  bool closed_ = false;
  bool rx_eof_ = false;
  bool fin_when_sent_ = false;
  int inflight_ = 0;
  std::unique_ptr<ConnOp> connect_op_, recv_op_, send_op_;
  sockaddr_in connect_addr_{};

  // Receive buffer: bytes [rx_head_, rx_tail_) are received and not yet parsed.
  std::unique_ptr<uint8_t[]> rx_;
  size_t rx_head_ = 0, rx_tail_ = 0;

  // Output queue. Segments [0, tx_frozen_) are covered by the SENDMSG in flight and must not
  // change; later ones may grow. `open` segments are coalescing buffers; others hold one
  // payload moved out of a Message.
  struct Segment {
    std::vector<uint8_t> bytes;
    bool open = false;
  };
  std::deque<Segment> tx_;
  size_t tx_sent_in_first_ = 0;
  size_t tx_frozen_ = 0;
  size_t queued_bytes_ = 0;
  // When the queue was last seen over a StalledOver() limit without progress since.
  absl::Time over_since_ = absl::InfiniteFuture();
  std::vector<std::vector<uint8_t>> spare_;  // cleared coalescing buffers for reuse
  static constexpr int kMaxIov = 64;
  iovec iov_[kMaxIov];
  msghdr msg_{};
};

}  // namespace dsm
