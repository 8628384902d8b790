#include "transport/tcp/tcp_connection.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/payload_pool.h"
#include "transport/wire.h"

namespace dsm {
namespace {

constexpr size_t kMaxFrame = kWireHeaderSize + kMaxPayload;
// Several max frames: a recv never has to wait for the parser, and a partial frame is moved
// to the front only once per ~3 max frames of data.
constexpr size_t kRxCap = 4 * kMaxFrame;
// Payloads at least this large are sent from the Message's vector (no copy); smaller frames
// are copied into a coalescing buffer so a burst leaves in one SENDMSG.
constexpr size_t kGatherMin = 1024;
constexpr size_t kCoalesceMax = 64 * 1024;

}  // namespace

// One kind of ring operation of one connection. While in flight it holds a reference to the
// connection, so the connection (and this op, its buffers, its msghdr) outlives the CQE.
class TcpConnection::ConnOp final : public EventLoop::Op {
 public:
  ConnOp(TcpConnection* c, OpKind kind) : conn_(c), kind_(kind) {}
  void OnComplete(int res, uint32_t /*flags*/) override {
    std::shared_ptr<TcpConnection> keep = std::move(hold);
    inflight = false;
    conn_->OnOpComplete(kind_, res);
  }
  std::shared_ptr<TcpConnection> hold;
  bool inflight = false;

 private:
  TcpConnection* const conn_;
  const OpKind kind_;
};

std::shared_ptr<TcpConnection> TcpConnection::Create(EventLoop* loop, Owner* owner, int fd,
                                                     size_t cluster_size) {
  return std::shared_ptr<TcpConnection>(new TcpConnection(loop, owner, fd, cluster_size));
}

TcpConnection::TcpConnection(EventLoop* loop, Owner* owner, int fd, size_t cluster_size)
    : loop_(loop),
      owner_(owner),
      fd_(fd),
      cluster_size_(cluster_size),
      connect_op_(std::make_unique<ConnOp>(this, OpKind::kConnect)),
      recv_op_(std::make_unique<ConnOp>(this, OpKind::kRecv)),
      send_op_(std::make_unique<ConnOp>(this, OpKind::kSend)),
      rx_(new uint8_t[kRxCap]) {}

TcpConnection::~TcpConnection() {
  if (fd_ >= 0) close(fd_);
}

void TcpConnection::Arm(ConnOp* op) {
  op->hold = shared_from_this();
  op->inflight = true;
  ++inflight_;
}

void TcpConnection::StartConnect(const sockaddr_in& addr) {
  connect_addr_ = addr;
  Arm(connect_op_.get());
  io_uring_sqe* sqe = loop_->Prepare(connect_op_.get());
  io_uring_prep_connect(sqe, fd_, reinterpret_cast<const sockaddr*>(&connect_addr_),
                        sizeof(connect_addr_));
}

void TcpConnection::StartReceiving() {
  if (!closed_ && !recv_op_->inflight) ArmRecv();
}

void TcpConnection::ArmRecv() {
  Arm(recv_op_.get());
  io_uring_sqe* sqe = loop_->Prepare(recv_op_.get());
  io_uring_prep_recv(sqe, fd_, rx_.get() + rx_tail_, kRxCap - rx_tail_, 0);
}

void TcpConnection::OnOpComplete(OpKind kind, int res) {
  --inflight_;
  if (closed_) {
    MaybeFinish();
    return;
  }
  switch (kind) {
    case OpKind::kConnect:
      if (owner_ != nullptr) owner_->OnConnected(this, res);
      break;
    case OpKind::kRecv:
      OnRecv(res);
      break;
    case OpKind::kSend:
      OnSend(res);
      break;
  }
}

void TcpConnection::OnRecv(int res) {
  if (res < 0) {
    if (res == -EINTR || res == -EAGAIN || res == -ENOBUFS) {
      ArmRecv();
      return;
    }
    Fail(absl::ErrnoToStatus(-res, "recv"), /*bad=*/false);
    return;
  }
  if (res == 0) {
    rx_eof_ = true;
    Fail(absl::UnavailableError("connection closed by the peer"), /*bad=*/false);
    return;
  }
  rx_tail_ += static_cast<size_t>(res);
  if (!admitted()) {
    auto used =
        admission->Feed(absl::MakeConstSpan(rx_.get() + rx_head_, rx_tail_ - rx_head_));
    if (!used.ok()) {
      Close();
      if (owner_ != nullptr) owner_->OnAdmission(this, used.status());
      return;
    }
    rx_head_ += *used;
    if (!admission->output().empty()) {
      EnqueueRaw(admission->output());
      admission->output().clear();
    }
    if (admission->done() && owner_ != nullptr) owner_->OnAdmission(this, absl::OkStatus());
  }
  while (!closed_ && admitted()) {
    const size_t avail = rx_tail_ - rx_head_;
    auto len = PeekFrameLength(absl::MakeConstSpan(rx_.get() + rx_head_, avail), cluster_size_);
    if (!len.ok()) {
      Fail(len.status(), /*bad=*/true);
      return;
    }
    if (*len == 0 || *len > avail) break;
    owner_->OnFrame(this, absl::MakeConstSpan(rx_.get() + rx_head_, *len));
    rx_head_ += *len;
  }
  if (closed_) return;
  if (rx_head_ == rx_tail_) {
    rx_head_ = rx_tail_ = 0;
  } else if (kRxCap - rx_head_ < kMaxFrame) {
    // Make room for the largest frame that may start at rx_head_.
    std::memmove(rx_.get(), rx_.get() + rx_head_, rx_tail_ - rx_head_);
    rx_tail_ -= rx_head_;
    rx_head_ = 0;
  }
  ArmRecv();
}

void TcpConnection::AppendSmall(const uint8_t* data, size_t len) {
  if (tx_.size() <= tx_frozen_ || !tx_.back().open ||
      tx_.back().bytes.size() + len > kCoalesceMax) {
    Segment s;
    s.open = true;
    if (!spare_.empty()) {
      s.bytes = std::move(spare_.back());
      spare_.pop_back();
    } else {
      s.bytes.reserve(4096);
    }
    tx_.push_back(std::move(s));
  }
  std::vector<uint8_t>& b = tx_.back().bytes;
  b.insert(b.end(), data, data + len);
}

void TcpConnection::Enqueue(Message&& m) {
  if (closed_) return;
  uint8_t header[kWireHeaderSize];
  EncodeHeader(m, header);
  AppendSmall(header, sizeof(header));
  if (m.payload.size() >= kGatherMin) {
    Segment s;
    s.bytes = std::move(m.payload);
    queued_bytes_ += kWireHeaderSize + s.bytes.size();
    tx_.push_back(std::move(s));
  } else {
    if (!m.payload.empty()) AppendSmall(m.payload.data(), m.payload.size());
    queued_bytes_ += kWireHeaderSize + m.payload.size();
  }
  MaybeSend();
}

void TcpConnection::EnqueueRaw(absl::Span<const uint8_t> bytes) {
  if (closed_ || bytes.empty()) return;
  AppendSmall(bytes.data(), bytes.size());
  queued_bytes_ += bytes.size();
  MaybeSend();
}

absl::Duration TcpConnection::StalledOver(size_t limit) {
  if (queued_bytes_ <= limit) {
    over_since_ = absl::InfiniteFuture();
    return absl::ZeroDuration();
  }
  const absl::Time now = absl::Now();
  if (over_since_ > now) over_since_ = now;
  return now - over_since_;
}

void TcpConnection::MaybeSend() {
  if (closed_ || send_op_->inflight || tx_.empty()) return;
  const size_t n = std::min(tx_.size(), static_cast<size_t>(kMaxIov));
  for (size_t i = 0; i < n; ++i) {
    const size_t skip = i == 0 ? tx_sent_in_first_ : 0;
    iov_[i].iov_base = tx_[i].bytes.data() + skip;
    iov_[i].iov_len = tx_[i].bytes.size() - skip;
  }
  msg_ = msghdr{};
  msg_.msg_iov = iov_;
  msg_.msg_iovlen = n;
  tx_frozen_ = n;
  Arm(send_op_.get());
  io_uring_sqe* sqe = loop_->Prepare(send_op_.get());
  io_uring_prep_sendmsg(sqe, fd_, &msg_, MSG_NOSIGNAL);
}

void TcpConnection::OnSend(int res) {
  tx_frozen_ = 0;
  if (res < 0) {
    if (res == -EINTR || res == -EAGAIN || res == -ENOBUFS) {
      MaybeSend();
      return;
    }
    Fail(absl::ErrnoToStatus(-res, "sendmsg"), /*bad=*/false);
    return;
  }
  if (res == 0) {
    Fail(absl::UnavailableError("sendmsg sent nothing"), /*bad=*/false);
    return;
  }
  size_t left = static_cast<size_t>(res);
  queued_bytes_ -= left;
  over_since_ = absl::InfiniteFuture();  // progress: a stall is counted from now on
  while (left > 0) {
    Segment& s = tx_.front();
    const size_t rest = s.bytes.size() - tx_sent_in_first_;
    if (left < rest) {
      tx_sent_in_first_ += left;
      break;
    }
    left -= rest;
    tx_sent_in_first_ = 0;
    if (s.open && spare_.size() < 4 && s.bytes.capacity() <= 2 * kCoalesceMax) {
      s.bytes.clear();
      spare_.push_back(std::move(s.bytes));
    } else if (!s.open) {
      RecyclePayloadBuffer(std::move(s.bytes));  // a page run's buffer: reused by the next one
    }
    tx_.pop_front();
  }
  if (fin_when_sent_ && tx_.empty()) {
    ShutdownWrite();
    return;
  }
  MaybeSend();
}

void TcpConnection::Fail(const absl::Status& why, bool bad) {
  if (closed_) return;
  Close();
  if (owner_ != nullptr) owner_->OnFailed(this, why, bad);
}

void TcpConnection::ShutdownWrite() {
  if (!closed_ && fd_ >= 0) shutdown(fd_, SHUT_WR);
}

void TcpConnection::ShutdownWriteWhenSent() {
  if (tx_.empty()) {
    ShutdownWrite();
  } else {
    fin_when_sent_ = true;
  }
}

void TcpConnection::Close() {
  if (closed_) return;
  closed_ = true;
  if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);  // wakes a pending recv/send/connect
  for (ConnOp* op : {connect_op_.get(), recv_op_.get(), send_op_.get()}) {
    if (!op->inflight) continue;
    io_uring_sqe* sqe = loop_->Prepare(nullptr);
    io_uring_prep_cancel(sqe, op, 0);
  }
  // Segments under the SENDMSG in flight stay until its completion: the kernel may be
  // reading them.
  tx_.resize(send_op_->inflight ? tx_frozen_ : 0);
  queued_bytes_ = 0;
  MaybeFinish();
}

void TcpConnection::Detach() {
  owner_ = nullptr;
  Close();
}

void TcpConnection::MaybeFinish() {
  if (closed_ && inflight_ == 0 && fd_ >= 0) {
    close(fd_);
    fd_ = -1;
    tx_.clear();
    tx_frozen_ = 0;
  }
}

}  // namespace dsm
