#include "transport/rdma/rdma_transport.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "transport/admission/admission.h"
#include "transport/admission/limits.h"
#include "transport/rdma/flow_control.h"
#include "transport/rdma/framing.h"
#include "transport/wire.h"

namespace dsm {
namespace {

using rdma::FlowControl;
using rdma::FrameKind;
using rdma::RdmaHeader;
using rdma::VerbsOps;

constexpr size_t kSlotSize = kRdmaSlotSize;

// --- bootstrap handshake (little-endian, fixed size) ---
constexpr uint32_t kHandshakeMagic = 0x484d5344;  // "DSMH"
constexpr uint16_t kHandshakeVersion = 1;
constexpr size_t kHandshakeSize = 96;
constexpr uint32_t kReadyMagic = 0x31594452;  // "RDY1"

struct Handshake {
  NodeId node_id = 0;
  uint32_t cluster_size = 0;
  rdma::QpEndpoint ep;
  rdma::LinkLayer link_layer = rdma::LinkLayer::kInfiniBand;
  uint64_t slots_addr = 0;
  uint32_t slots_rkey = 0;
  uint32_t slot_size = 0;
  uint32_t staging_slots = 0;
  uint32_t recv_credits = 0;
  uint32_t ctrl_reserve = 0;
  uint32_t buf_size = 0;
};

void PutN(uint8_t* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t GetN(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void EncodeHandshake(const Handshake& h, uint8_t* o) {
  std::memset(o, 0, kHandshakeSize);
  PutN(o + 0, kHandshakeMagic, 4);
  PutN(o + 4, kHandshakeVersion, 2);
  o[6] = static_cast<uint8_t>(h.link_layer);
  o[7] = h.ep.use_grh ? 1 : 0;
  PutN(o + 8, h.node_id, 4);
  PutN(o + 12, h.cluster_size, 4);
  PutN(o + 16, h.ep.qp_num, 4);
  PutN(o + 20, h.ep.psn, 4);
  PutN(o + 24, h.ep.lid, 2);
  PutN(o + 28, h.ep.mtu, 4);
  std::memcpy(o + 32, h.ep.gid.raw, 16);
  PutN(o + 48, h.slots_addr, 8);
  PutN(o + 56, h.slots_rkey, 4);
  PutN(o + 60, h.slot_size, 4);
  PutN(o + 64, h.staging_slots, 4);
  PutN(o + 68, h.recv_credits, 4);
  PutN(o + 72, h.ctrl_reserve, 4);
  PutN(o + 76, h.buf_size, 4);
}

absl::StatusOr<Handshake> DecodeHandshake(const uint8_t* p) {
  if (GetN(p, 4) != kHandshakeMagic) {
    return absl::InvalidArgumentError("rdma handshake: bad magic (not a dsm RDMA peer?)");
  }
  if (GetN(p + 4, 2) != kHandshakeVersion) {
    return absl::InvalidArgumentError("rdma handshake: unsupported version");
  }
  Handshake h;
  if (p[6] != 1 && p[6] != 2) return absl::InvalidArgumentError("rdma handshake: link layer");
  h.link_layer = static_cast<rdma::LinkLayer>(p[6]);
  h.ep.use_grh = p[7] != 0;
  h.node_id = static_cast<NodeId>(GetN(p + 8, 4));
  h.cluster_size = static_cast<uint32_t>(GetN(p + 12, 4));
  h.ep.qp_num = static_cast<uint32_t>(GetN(p + 16, 4));
  h.ep.psn = static_cast<uint32_t>(GetN(p + 20, 4)) & 0xffffff;
  h.ep.lid = static_cast<uint16_t>(GetN(p + 24, 2));
  h.ep.mtu = static_cast<uint32_t>(GetN(p + 28, 4));
  std::memcpy(h.ep.gid.raw, p + 32, 16);
  h.slots_addr = GetN(p + 48, 8);
  h.slots_rkey = static_cast<uint32_t>(GetN(p + 56, 4));
  h.slot_size = static_cast<uint32_t>(GetN(p + 60, 4));
  h.staging_slots = static_cast<uint32_t>(GetN(p + 64, 4));
  h.recv_credits = static_cast<uint32_t>(GetN(p + 68, 4));
  h.ctrl_reserve = static_cast<uint32_t>(GetN(p + 72, 4));
  h.buf_size = static_cast<uint32_t>(GetN(p + 76, 4));
  return h;
}

// wr_id = peer (8 bits) | kind (8 bits) | index (32 bits).
enum class WrKind : uint8_t { kRecv = 1, kSend = 2, kWrite = 3 };
uint64_t MakeWrId(NodeId peer, WrKind k, uint32_t index) {
  return (static_cast<uint64_t>(peer) << 56) | (static_cast<uint64_t>(k) << 48) | index;
}

// An io_uring operation whose completion runs a callback.
class FnOp final : public EventLoop::Op {
 public:
  explicit FnOp(std::function<void(int)> fn) : fn_(std::move(fn)) {}
  void OnComplete(int res, uint32_t) override {
    in_flight = false;
    fn_(res);
  }
  bool in_flight = false;

 private:
  std::function<void(int)> fn_;
};

absl::StatusOr<std::pair<sockaddr_storage, socklen_t>> Resolve(const std::string& hostport) {
  size_t colon = hostport.rfind(':');
  if (colon == std::string::npos || colon + 1 == hostport.size()) {
    return absl::InvalidArgumentError(absl::StrCat("address '", hostport, "' is not host:port"));
  }
  std::string host = hostport.substr(0, colon);
  std::string port = hostport.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_INET;  // as ParseHostPort: numeric IPv4 or localhost
  hints.ai_flags = AI_NUMERICSERV;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve '", hostport, "': ", gai_strerror(rc)));
  }
  std::pair<sockaddr_storage, socklen_t> out{};
  std::memcpy(&out.first, res->ai_addr, res->ai_addrlen);
  out.second = res->ai_addrlen;
  freeaddrinfo(res);
  return out;
}

// The admission handshake (admission/admission.h) on a set-up socket, one ring operation at
// a time: send what the handshake produced, else receive exactly what it wants next (so no
// byte of the set-up handshake that follows is consumed).
struct AdmitIo {
  std::unique_ptr<admission::Handshake> h;
  std::vector<uint8_t> out;
  size_t out_done = 0;
  uint8_t in[admission::kDialerHelloSize] = {};
  bool receiving = false;
};

// Arms the next admission operation; false when admission is done and nothing is left to send.
bool ArmAdmitIo(io_uring_sqe* (*arm)(void*, FnOp&), void* ctx, FnOp& op, int fd, AdmitIo& a) {
  if (a.out_done < a.out.size()) {
    a.receiving = false;
    io_uring_prep_send(arm(ctx, op), fd, a.out.data() + a.out_done, a.out.size() - a.out_done,
                       MSG_NOSIGNAL);
    return true;
  }
  a.out.clear();
  a.out_done = 0;
  if (a.h->done()) return false;
  a.receiving = true;
  io_uring_prep_recv(arm(ctx, op), fd, a.in, a.h->wanted(), 0);
  return true;
}

// Accounts one completed admission operation. Error: the peer is refused.
absl::Status OnAdmitIo(AdmitIo& a, int res) {
  if (res <= 0) {
    return absl::UnavailableError(absl::StrCat(
        "admission: ", res == 0 ? "connection closed" : std::strerror(-res),
        a.receiving ? " (does the peer have the same cluster key?)" : ""));
  }
  if (!a.receiving) {
    a.out_done += static_cast<size_t>(res);
    return absl::OkStatus();
  }
  auto used = a.h->Feed(absl::MakeConstSpan(a.in, static_cast<size_t>(res)));
  if (!used.ok()) return used.status();
  a.out.insert(a.out.end(), a.h->output().begin(), a.h->output().end());
  a.h->output().clear();
  return absl::OkStatus();
}

// Connection state of one peer.
//
//   kIdle --(connect / accept)--> kHandshake --(QP RTR+RTS, "ready" sent)--> kReadyWait
//   kReadyWait --(peer's "ready" or its HELLO)--> kConnected (may send; HELLO queued first)
//   kConnected --(peer's HELLO)--> kUp (OnPeerUp)
//   any --(error completion, bad message, EOF on the set-up socket, timeout)--> kDown
//
// On a cluster with a key, kHandshake begins with the admission handshake (kAdmit) on the
// set-up socket; the QP handshake (which reveals this node's id and QP) follows only once the
// peer proved the key, and an acceptor hands the socket to a Peer only after that.
//
// Invariants: nothing is posted to the QP before kConnected (the peer may not be RTR yet);
// no message but HELLO is accepted before kUp; kDown is final and reported once.
enum class ConnState { kIdle, kHandshake, kReadyWait, kConnected, kUp, kDown };

enum class BootPhase { kNone, kConnect, kRetryWait, kAdmit, kSendHs, kRecvHs, kSendReady, kRecvReady,
                       kWatch };

struct SendBufInfo {
  int32_t slot = -1;    // local staging slot freed by this SEND's completion
  bool credit = false;  // a credit-only message
};

struct Peer {
  explicit Peer(const RdmaTuning& t)
      : fc(t.recv_credits, t.ctrl_reserve, t.staging_slots, t.credit_threshold) {}

  NodeId id = 0;
  ConnState state = ConnState::kIdle;
  bool up_reported = false;
  bool got_ready = false;

  // Bootstrap socket: one operation in flight at a time.
  int fd = -1;
  BootPhase phase = BootPhase::kNone;
  std::unique_ptr<FnOp> op;
  sockaddr_storage addr{};
  socklen_t addrlen = 0;
  __kernel_timespec retry_ts{};
  uint8_t hs_out[kHandshakeSize] = {};
  uint8_t hs_in[kHandshakeSize] = {};
  uint8_t ready_out[4] = {};
  uint8_t ready_in[4] = {};
  uint8_t watch_byte = 0;
  size_t io_done = 0;
  AdmitIo admit;

  // RDMA resources.
  uint32_t qpn = 0;
  bool has_qp = false;
  uint32_t psn = 0;
  uint8_t* recv_bufs = nullptr;   // (recv_credits + ctrl_reserve) * buf_size
  uint8_t* send_bufs = nullptr;   // same count
  uint8_t* send_slots = nullptr;  // staging_slots * kSlotSize (local sources of RDMA WRITE)
  uint8_t* recv_slots = nullptr;  // staging_slots * kSlotSize (the peer writes here)
  std::vector<uint32_t> free_send;
  std::vector<SendBufInfo> send_info;
  std::vector<bool> local_slot_busy;
  FlowControl fc;
  std::deque<std::vector<uint8_t>> pending;  // encoded frames, FIFO
  bool stalled = false;
  uint64_t remote_slots_addr = 0;
  uint32_t remote_rkey = 0;
};

class RdmaTransportImpl final : public Transport {
 public:
  RdmaTransportImpl(const Options& o, const RdmaTuning& t, std::unique_ptr<VerbsOps> v,
                    std::shared_ptr<const admission::ClusterAuth> auth)
      : options_(o), tuning_(t), verbs_(std::move(v)), auth_(std::move(auth)), self_(o.node_id),
        cluster_(static_cast<uint32_t>(o.peers.size())),
        table_(o.node_id, o.peers.size(), NewIncarnation(), absl::InfiniteFuture()) {
    for (const std::string& s : o.peers) {
      absl::StatusOr<HostPort> hp = ParseHostPort(s);
      peer_ipv4_.push_back(hp.ok() ? hp->ipv4 : 0);
    }
  }

  ~RdmaTransportImpl() override {
    if (started_ && !shut_down_) Shutdown(absl::Now());
    for (auto& p : peers_) {
      if (p && p->has_qp) verbs_->DestroyQp(p->qpn);
      if (p && p->fd >= 0) close(p->fd);
    }
    if (local_mr_.addr) verbs_->DeregisterMemory(local_mr_);
    if (remote_mr_.addr) verbs_->DeregisterMemory(remote_mr_);
    if (local_arena_) munmap(local_arena_, local_len_);
    if (remote_arena_) munmap(remote_arena_, remote_len_);
    if (listen_fd_ >= 0) close(listen_fd_);
  }

  absl::Status Init();

  absl::Status Start(EventLoop* loop, Handler* handler) override;
  void Send(Message&& m) override;
  bool IsUp(NodeId peer) const override {
    return peer < cluster_ && peer != self_ && table_.IsUp(peer) &&
           peers_[peer]->state == ConnState::kUp;
  }
  Incarnation incarnation() const override { return table_.self_incarnation(); }
  void Disconnect(NodeId peer, const absl::Status& why) override {
    if (peer < cluster_ && peer != self_) MarkDown(*peers_[peer], why);
  }
  void Shutdown(absl::Time deadline) override;
  Counters counters() const override {
    Counters c = counters_;
    c.hellos_refused = table_.Totals().refused;
    return c;
  }
  RdmaCounters rdma_counters() const { return rdma_counters_; }

 private:
  struct Accepted {
    int fd = -1;
    uint8_t hs_in[kHandshakeSize] = {};
    size_t io_done = 0;
    std::unique_ptr<FnOp> op;
    AdmitIo admit;  // h set while admission runs
    uint32_t source = 0;  // the client's IPv4 address (host byte order)
    uint64_t id = 0;
  };

  io_uring_sqe* Arm(FnOp& op) {
    op.in_flight = true;
    return loop_->Prepare(&op);
  }
  static io_uring_sqe* ArmThunk(void* self, FnOp& op) {
    return static_cast<RdmaTransportImpl*>(self)->Arm(op);
  }
  bool Admitting(const AdmitIo& a) const { return a.h != nullptr && (!a.h->done() || !a.out.empty()); }
  void Cancel(FnOp& op) {
    if (!op.in_flight) return;
    io_uring_sqe* sqe = loop_->Prepare(nullptr);
    io_uring_prep_cancel(sqe, &op, 0);
  }

  // Bootstrap.
  void ArmAccept();
  void OnAccept(int res);
  void ArmAcceptedRecv(Accepted* a);
  void OnAcceptedRecv(Accepted* a, int res);
  void StartConnect(Peer& p);
  void OnBoot(Peer& p, int res);
  void BootIo(Peer& p);
  absl::Status ConnectQp(Peer& p, const Handshake& h);
  void OnConnectTimeout(int res);
  void BecomeConnected(Peer& p);

  // Data path.
  void ArmCqPoll();
  void OnCqReadable(int res);
  void DrainCq();
  void HandleCompletion(const rdma::Completion& c);
  void HandleRecv(Peer& p, uint32_t idx, absl::Span<const uint8_t> data);
  void Repost(Peer& p, uint32_t idx);
  void Flush(Peer& p);
  bool PostCreditMessage(Peer& p);
  void BadMessage(Peer& p, const absl::Status& why);
  void MarkDown(Peer& p, const absl::Status& why);
  void DeliverLocal(Message&& m);
  Handshake MyHandshake(const Peer& p) const;

  uint32_t bufs_per_peer() const { return tuning_.recv_credits + tuning_.ctrl_reserve; }

  const Options options_;
  const RdmaTuning tuning_;
  std::unique_ptr<VerbsOps> verbs_;
  const std::shared_ptr<const admission::ClusterAuth> auth_;  // null: no admission
  const NodeId self_;
  const uint32_t cluster_;
  EventLoop* loop_ = nullptr;
  Handler* handler_ = nullptr;
  bool started_ = false;
  bool shut_down_ = false;
  bool shutting_down_ = false;

  std::vector<std::unique_ptr<Peer>> peers_;  // index = node id; null for self
  uint8_t* local_arena_ = nullptr;
  size_t local_len_ = 0;
  uint8_t* remote_arena_ = nullptr;
  size_t remote_len_ = 0;
  rdma::MemoryRegion local_mr_, remote_mr_;

  int listen_fd_ = -1;
  std::unique_ptr<FnOp> accept_op_;
  // Set-up connections accepted and not yet handed to a Peer: bounded per source address and
  // in total (admission/limits.h), each closed if it has not finished within kHandshakeLimit.
  std::list<std::unique_ptr<Accepted>> accepted_;
  uint64_t next_accepted_id_ = 0;
  std::vector<uint32_t> peer_ipv4_;
  admission::RateLimitedLog source_log_{absl::Seconds(10)};
  std::unique_ptr<FnOp> cq_op_;
  std::unique_ptr<FnOp> timeout_op_;
  __kernel_timespec timeout_ts_{};
  absl::Time connect_deadline_;
  // Up/down, incarnations and the report-once of OnPeerDown (peer_table.h). The QP set-up
  // states stay in Peer::state; a peer is reported up when both agree.
  PeerTable table_;

  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
  Counters counters_;
  RdmaCounters rdma_counters_;
};

absl::Status RdmaTransportImpl::Init() {
  const uint32_t n = cluster_ - 1;
  const size_t bufs = bufs_per_peer();
  const size_t slots_bytes = size_t{tuning_.staging_slots} * kSlotSize;
  const size_t per_peer_local = 2 * bufs * tuning_.buf_size + slots_bytes;
  local_len_ = std::max<size_t>(n * per_peer_local, 4096);
  remote_len_ = std::max<size_t>(n * slots_bytes, 4096);
  // Pre-faulted: the buffers must not need page allocation under memory pressure.
  void* a = mmap(nullptr, local_len_, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (a == MAP_FAILED) return absl::ErrnoToStatus(errno, "mmap (RDMA buffers)");
  local_arena_ = static_cast<uint8_t*>(a);
  a = mmap(nullptr, remote_len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
           -1, 0);
  if (a == MAP_FAILED) return absl::ErrnoToStatus(errno, "mmap (RDMA staging slots)");
  remote_arena_ = static_cast<uint8_t*>(a);
  DSM_ASSIGN_OR_RETURN(local_mr_, verbs_->RegisterMemory(local_arena_, local_len_, false));
  DSM_ASSIGN_OR_RETURN(remote_mr_, verbs_->RegisterMemory(remote_arena_, remote_len_, true));

  const uint32_t max_send = bufs + tuning_.staging_slots + 4;
  DSM_RETURN_IF_ERROR(verbs_->CreateCq(static_cast<int>(n * (max_send + bufs) + 16)));

  std::mt19937 rng(std::random_device{}());
  peers_.resize(cluster_);
  uint32_t k = 0;
  for (NodeId id = 0; id < cluster_; ++id) {
    if (id == self_) continue;
    auto p = std::make_unique<Peer>(tuning_);
    p->id = id;
    uint8_t* base = local_arena_ + size_t{k} * per_peer_local;
    p->send_slots = base;
    p->recv_bufs = base + slots_bytes;
    p->send_bufs = p->recv_bufs + bufs * tuning_.buf_size;
    p->recv_slots = remote_arena_ + size_t{k} * slots_bytes;
    p->send_info.resize(bufs);
    for (uint32_t i = bufs; i > 0; --i) p->free_send.push_back(i - 1);
    p->local_slot_busy.assign(tuning_.staging_slots, false);
    p->psn = rng() & 0xffffff;
    DSM_ASSIGN_OR_RETURN(p->qpn, verbs_->CreateQp(max_send, bufs));
    p->has_qp = true;
    DSM_RETURN_IF_ERROR(verbs_->ModifyToInit(p->qpn));
    // Receives may be posted in INIT; they are all there before the peer can send.
    for (uint32_t i = 0; i < bufs; ++i) {
      DSM_RETURN_IF_ERROR(verbs_->PostRecv(
          p->qpn, MakeWrId(id, WrKind::kRecv, i),
          rdma::Sge{reinterpret_cast<uint64_t>(p->recv_bufs + size_t{i} * tuning_.buf_size),
                    tuning_.buf_size, local_mr_.lkey}));
    }
    peers_[id] = std::move(p);
    ++k;
  }
  return absl::OkStatus();
}

Handshake RdmaTransportImpl::MyHandshake(const Peer& p) const {
  const rdma::PortInfo& port = verbs_->port();
  Handshake h;
  h.node_id = self_;
  h.cluster_size = cluster_;
  h.ep.qp_num = p.qpn;
  h.ep.psn = p.psn;
  h.ep.lid = port.lid;
  h.ep.use_grh = port.gid_index >= 0;
  h.ep.gid = port.gid;
  h.ep.mtu = port.active_mtu;
  h.link_layer = port.link_layer;
  h.slots_addr = reinterpret_cast<uint64_t>(p.recv_slots);
  h.slots_rkey = remote_mr_.rkey;
  h.slot_size = kSlotSize;
  h.staging_slots = tuning_.staging_slots;
  h.recv_credits = tuning_.recv_credits;
  h.ctrl_reserve = tuning_.ctrl_reserve;
  h.buf_size = tuning_.buf_size;
  return h;
}

absl::Status RdmaTransportImpl::Start(EventLoop* loop, Handler* handler) {
  if (started_) return absl::FailedPreconditionError("RdmaTransport::Start called twice");
  loop_ = loop;
  handler_ = handler;
  const std::string listen = options_.listen.empty() ? options_.peers[self_] : options_.listen;
  DSM_ASSIGN_OR_RETURN(auto la, Resolve(listen));
  listen_fd_ = socket(la.first.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return absl::ErrnoToStatus(errno, "socket");
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&la.first), la.second) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("bind ", listen, " (RDMA set-up socket)"));
  }
  if (::listen(listen_fd_, 64) != 0) return absl::ErrnoToStatus(errno, "listen");
  for (NodeId id = 0; id < cluster_; ++id) {
    if (id == self_) continue;
    Peer& p = *peers_[id];
    p.op = std::make_unique<FnOp>([this, &p](int res) { OnBoot(p, res); });
    if (id < self_) {
      DSM_ASSIGN_OR_RETURN(auto pa, Resolve(options_.peers[id]));
      p.addr = pa.first;
      p.addrlen = pa.second;
    }
  }
  started_ = true;

  cq_op_ = std::make_unique<FnOp>([this](int res) { OnCqReadable(res); });
  DSM_RETURN_IF_ERROR(verbs_->ArmCq());
  ArmCqPoll();
  accept_op_ = std::make_unique<FnOp>([this](int res) { OnAccept(res); });
  ArmAccept();
  connect_deadline_ = absl::Now() + options_.connect_timeout;
  table_.SetConnectDeadline(connect_deadline_);
  timeout_op_ = std::make_unique<FnOp>([this](int res) { OnConnectTimeout(res); });
  const timespec connect_ts = absl::ToTimespec(options_.connect_timeout);
  timeout_ts_.tv_sec = connect_ts.tv_sec;
  timeout_ts_.tv_nsec = connect_ts.tv_nsec;
  io_uring_prep_timeout(Arm(*timeout_op_), &timeout_ts_, 0, 0);
  for (NodeId id = 0; id < self_; ++id) StartConnect(*peers_[id]);
  loop_->Submit();
  return absl::OkStatus();
}

// ---------------------------------------------------------------- bootstrap

void RdmaTransportImpl::ArmAccept() {
  io_uring_prep_accept(Arm(*accept_op_), listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
}

void RdmaTransportImpl::OnAccept(int res) {
  if (shutting_down_) {
    if (res >= 0) close(res);
    return;
  }
  if (res >= 0) {
    sockaddr_in from{};
    socklen_t from_len = sizeof(from);
    uint32_t source = 0;
    if (getpeername(res, reinterpret_cast<sockaddr*>(&from), &from_len) == 0 &&
        from.sin_family == AF_INET) {
      source = ntohl(from.sin_addr.s_addr);
    }
    size_t from_source = 0;
    for (const auto& x : accepted_) from_source += x->source == source;
    const size_t source_limit = admission::PerSourceSlots(peer_ipv4_, self_, source);
    if (from_source >= source_limit || accepted_.size() >= admission::TotalSlots(cluster_)) {
      ++counters_.connections_refused;
      close(res);
      uint64_t count = 0;
      if (source_log_.Note(source, absl::Now(), &count)) {
        DSM_LOG(WARNING) << "rdma node " << self_ << ": refused a set-up connection from "
                         << admission::Ipv4String(source) << ": " << from_source
                         << " of its connections (limit " << source_limit << ") and "
                         << accepted_.size() << " in all are still in their handshake ("
                         << count << " such events since the last line about it)";
      }
      ArmAccept();
      return;
    }
    auto a = std::make_unique<Accepted>();
    a->fd = res;
    a->source = source;
    a->id = ++next_accepted_id_;
    // A client that never finishes: shutting its socket down ends the receive in flight,
    // which closes it through the usual path.
    std::weak_ptr<int> alive = alive_;
    loop_->RunAfter(
        std::min(absl::Seconds(5), options_.peer_timeout),
        [this, alive, id = a->id] {
          if (alive.expired() || shutting_down_) return;
          for (auto& x : accepted_) {
            if (x->id == id && x->fd >= 0) shutdown(x->fd, SHUT_RDWR);
          }
        });
    Accepted* raw = a.get();
    a->op = std::make_unique<FnOp>([this, raw](int r) { OnAcceptedRecv(raw, r); });
    if (auth_ != nullptr) {
      a->admit.h = std::make_unique<admission::Handshake>(admission::Handshake::Acceptor(auth_));
    }
    accepted_.push_back(std::move(a));
    ArmAcceptedRecv(raw);
  } else if (res != -EINTR && res != -ECONNABORTED && res != -EAGAIN) {
    DSM_LOG(WARNING) << "rdma: accept: " << std::strerror(-res);
  }
  ArmAccept();
}

void RdmaTransportImpl::ArmAcceptedRecv(Accepted* a) {
  if (Admitting(a->admit) && ArmAdmitIo(&ArmThunk, this, *a->op, a->fd, a->admit)) return;
  io_uring_prep_recv(Arm(*a->op), a->fd, a->hs_in + a->io_done, kHandshakeSize - a->io_done, 0);
}

void RdmaTransportImpl::OnAcceptedRecv(Accepted* a, int res) {
  auto drop = [&](const std::string& why) {
    uint64_t count = 0;
    if (!why.empty() && source_log_.Note(a->source, absl::Now(), &count)) {
      DSM_LOG(WARNING) << "rdma node " << self_ << ": rejected a set-up connection from "
                       << admission::Ipv4String(a->source) << ": " << why
                       << (count > 1 ? absl::StrCat(" (", count,
                                                    " such events since the last line about it)")
                                     : std::string());
    }
    close(a->fd);
    accepted_.remove_if([a](const std::unique_ptr<Accepted>& x) { return x.get() == a; });
  };
  if (shutting_down_) return drop("");
  if (Admitting(a->admit)) {
    if (absl::Status s = OnAdmitIo(a->admit, res); !s.ok()) {
      counters_.admission_failures++;
      return drop(std::string(s.message()));
    }
    return ArmAcceptedRecv(a);
  }
  if (res <= 0) return drop(res == 0 ? "closed before the handshake" : std::strerror(-res));
  a->io_done += static_cast<size_t>(res);
  if (a->io_done < kHandshakeSize) return ArmAcceptedRecv(a);
  absl::StatusOr<Handshake> h = DecodeHandshake(a->hs_in);
  if (!h.ok()) return drop(std::string(h.status().message()));
  if (h->node_id <= self_ || h->node_id >= cluster_) {
    return drop(absl::StrFormat("node %d may not connect to node %d", h->node_id, self_));
  }
  if (a->admit.h != nullptr && h->node_id != a->admit.h->peer()) {
    return drop(absl::StrFormat("node %d was admitted but its set-up handshake says node %d",
                                a->admit.h->peer(), h->node_id));
  }
  Peer& p = *peers_[h->node_id];
  if (table_.state(h->node_id) == PeerState::kDown) {
    // Its QP and buffers were torn down with it; RDMA does not set them up again.
    table_.NoteRefused(h->node_id);
    return drop(absl::StrFormat(
        "node %d was declared down here; over RDMA a node does not rejoin a running cluster "
        "(restart the cluster, or use the tcp transport)",
        h->node_id));
  }
  if (p.state != ConnState::kIdle) {
    return drop(absl::StrFormat("node %d connected twice", h->node_id));
  }
  // The socket now belongs to the peer; its handshake continues there.
  p.fd = a->fd;
  a->fd = -1;
  std::memcpy(p.hs_in, a->hs_in, kHandshakeSize);
  accepted_.remove_if([a](const std::unique_ptr<Accepted>& x) { return x.get() == a; });
  p.state = ConnState::kHandshake;
  absl::Status s = ConnectQp(p, *h);
  if (!s.ok()) return MarkDown(p, s);
  EncodeHandshake(MyHandshake(p), p.hs_out);
  p.phase = BootPhase::kSendHs;
  p.io_done = 0;
  BootIo(p);
}

void RdmaTransportImpl::StartConnect(Peer& p) {
  p.fd = socket(p.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (p.fd < 0) return MarkDown(p, absl::ErrnoToStatus(errno, "socket"));
  p.state = ConnState::kHandshake;
  p.phase = BootPhase::kConnect;
  io_uring_prep_connect(Arm(*p.op), p.fd, reinterpret_cast<sockaddr*>(&p.addr), p.addrlen);
}

// Issues the I/O of the current phase from p.io_done.
void RdmaTransportImpl::BootIo(Peer& p) {
  switch (p.phase) {
    case BootPhase::kSendHs:
      io_uring_prep_send(Arm(*p.op), p.fd, p.hs_out + p.io_done, kHandshakeSize - p.io_done,
                         MSG_NOSIGNAL);
      break;
    case BootPhase::kRecvHs:
      io_uring_prep_recv(Arm(*p.op), p.fd, p.hs_in + p.io_done, kHandshakeSize - p.io_done, 0);
      break;
    case BootPhase::kSendReady:
      io_uring_prep_send(Arm(*p.op), p.fd, p.ready_out + p.io_done, 4 - p.io_done, MSG_NOSIGNAL);
      break;
    case BootPhase::kRecvReady:
      io_uring_prep_recv(Arm(*p.op), p.fd, p.ready_in + p.io_done, 4 - p.io_done, 0);
      break;
    case BootPhase::kWatch:
      io_uring_prep_recv(Arm(*p.op), p.fd, &p.watch_byte, 1, 0);
      break;
    default:
      break;
  }
}

void RdmaTransportImpl::OnBoot(Peer& p, int res) {
  if (p.state == ConnState::kDown || shutting_down_) {
    if (p.fd >= 0) {
      close(p.fd);
      p.fd = -1;
    }
    return;
  }
  auto fail = [&](const char* what) {
    MarkDown(p, absl::UnavailableError(absl::StrFormat(
                    "rdma set-up with node %d: %s: %s", p.id, what,
                    res == 0 ? "connection closed" : std::strerror(-res))));
  };
  switch (p.phase) {
    case BootPhase::kConnect:
      if (res < 0) {
        close(p.fd);
        p.fd = -1;
        const bool retry = res == -ECONNREFUSED || res == -ENETUNREACH || res == -EHOSTUNREACH ||
                           res == -ETIMEDOUT || res == -ECONNRESET || res == -ECONNABORTED ||
                           res == -EAGAIN || res == -EINTR;
        if (!retry || absl::Now() + absl::Milliseconds(100) >= connect_deadline_) {
          return fail("connect");
        }
        p.phase = BootPhase::kRetryWait;
        p.retry_ts = {0, 100 * 1000 * 1000};
        io_uring_prep_timeout(Arm(*p.op), &p.retry_ts, 0, 0);
        return;
      }
      {
        int one = 1;
        setsockopt(p.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      }
      if (auth_ != nullptr) {
        p.admit = AdmitIo{};
        p.admit.h =
            std::make_unique<admission::Handshake>(admission::Handshake::Dialer(auth_, p.id));
        if (p.admit.h->failed()) {
          return MarkDown(p, absl::InternalError("admission: RAND_bytes failed"));
        }
        p.admit.out.swap(p.admit.h->output());
        p.phase = BootPhase::kAdmit;
        ArmAdmitIo(&ArmThunk, this, *p.op, p.fd, p.admit);
        return;
      }
      EncodeHandshake(MyHandshake(p), p.hs_out);
      p.phase = BootPhase::kSendHs;
      p.io_done = 0;
      return BootIo(p);
    case BootPhase::kRetryWait:
      return StartConnect(p);
    case BootPhase::kAdmit:
      if (absl::Status s = OnAdmitIo(p.admit, res); !s.ok()) {
        counters_.admission_failures++;
        return MarkDown(p, absl::PermissionDeniedError(absl::StrFormat(
                               "rdma set-up with node %d: %s", p.id, s.message())));
      }
      if (ArmAdmitIo(&ArmThunk, this, *p.op, p.fd, p.admit)) return;
      EncodeHandshake(MyHandshake(p), p.hs_out);
      p.phase = BootPhase::kSendHs;
      p.io_done = 0;
      return BootIo(p);
    case BootPhase::kSendHs:
      if (res <= 0) return fail("sending the handshake");
      p.io_done += static_cast<size_t>(res);
      if (p.io_done < kHandshakeSize) return BootIo(p);
      p.io_done = 0;
      if (p.id < self_) {  // connector: now read the acceptor's handshake
        p.phase = BootPhase::kRecvHs;
        return BootIo(p);
      }
      // Acceptor: our QP is RTS; say so.
      p.phase = BootPhase::kSendReady;
      PutN(p.ready_out, kReadyMagic, 4);
      p.state = ConnState::kReadyWait;
      return BootIo(p);
    case BootPhase::kRecvHs: {
      if (res <= 0) return fail("receiving the handshake");
      p.io_done += static_cast<size_t>(res);
      if (p.io_done < kHandshakeSize) return BootIo(p);
      absl::StatusOr<Handshake> h = DecodeHandshake(p.hs_in);
      if (!h.ok()) return MarkDown(p, h.status());
      if (h->node_id != p.id) {
        return MarkDown(p, absl::InvalidArgumentError(absl::StrFormat(
                               "rdma set-up: %s answered as node %d, expected node %d",
                               options_.peers[p.id], h->node_id, p.id)));
      }
      absl::Status s = ConnectQp(p, *h);
      if (!s.ok()) return MarkDown(p, s);
      p.phase = BootPhase::kSendReady;
      p.io_done = 0;
      PutN(p.ready_out, kReadyMagic, 4);
      p.state = ConnState::kReadyWait;
      return BootIo(p);
    }
    case BootPhase::kSendReady:
      if (res <= 0) return fail("sending ready");
      p.io_done += static_cast<size_t>(res);
      if (p.io_done < 4) return BootIo(p);
      p.phase = BootPhase::kRecvReady;
      p.io_done = 0;
      return BootIo(p);
    case BootPhase::kRecvReady:
      if (res <= 0) return fail("receiving ready");
      p.io_done += static_cast<size_t>(res);
      if (p.io_done < 4) return BootIo(p);
      if (GetN(p.ready_in, 4) != kReadyMagic) {
        return MarkDown(p, absl::InvalidArgumentError("rdma set-up: bad ready marker"));
      }
      p.phase = BootPhase::kWatch;
      BootIo(p);
      BecomeConnected(p);
      return;
    case BootPhase::kWatch:
      // The set-up socket carries nothing after "ready": EOF or an error means the peer's
      // process is gone; data is a protocol violation.
      if (res > 0) {
        return MarkDown(p, absl::InvalidArgumentError("rdma: unexpected data on set-up socket"));
      }
      return fail("set-up socket");
    case BootPhase::kNone:
      return;
  }
}

absl::Status RdmaTransportImpl::ConnectQp(Peer& p, const Handshake& h) {
  if (h.cluster_size != cluster_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "rdma set-up: node %d has a cluster of %d nodes, this node %d", p.id, h.cluster_size,
        cluster_));
  }
  if (h.slot_size != kSlotSize || h.staging_slots != tuning_.staging_slots ||
      h.recv_credits != tuning_.recv_credits || h.ctrl_reserve != tuning_.ctrl_reserve ||
      h.buf_size != tuning_.buf_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "rdma set-up: node %d uses different buffer geometry (RdmaTuning must match)", p.id));
  }
  if (h.link_layer != verbs_->port().link_layer) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "rdma set-up: node %d is on a different link layer (InfiniBand vs RoCE)", p.id));
  }
  p.remote_slots_addr = h.slots_addr;
  p.remote_rkey = h.slots_rkey;
  DSM_RETURN_IF_ERROR(verbs_->ModifyToRtr(p.qpn, h.ep));
  DSM_RETURN_IF_ERROR(verbs_->ModifyToRts(p.qpn, p.psn));
  return absl::OkStatus();
}

// The peer is RTR (it said "ready", or its HELLO arrived): we may post. HELLO goes first.
void RdmaTransportImpl::BecomeConnected(Peer& p) {
  if (p.got_ready) return;
  p.got_ready = true;
  if (p.state == ConnState::kReadyWait || p.state == ConnState::kHandshake) {
    p.state = ConnState::kConnected;
  }
  Message hello;
  hello.type = MsgType::kHello;
  hello.src = self_;
  hello.dst = p.id;
  hello.arg = cluster_;
  hello.req_id = table_.self_incarnation();
  std::vector<uint8_t> frame;
  EncodeMessage(hello, frame);
  p.pending.push_front(std::move(frame));
  Flush(p);
}

void RdmaTransportImpl::OnConnectTimeout(int res) {
  if (shutting_down_ || res == -ECANCELED) return;
  for (auto& p : peers_) {
    if (p && p->state != ConnState::kUp && p->state != ConnState::kDown) {
      MarkDown(*p, absl::DeadlineExceededError(absl::StrFormat(
                       "rdma: node %d not connected within connect_timeout (%d ms)", p->id,
                       static_cast<int>(absl::ToInt64Milliseconds(options_.connect_timeout)))));
    }
  }
}

// ---------------------------------------------------------------- completions

void RdmaTransportImpl::ArmCqPoll() {
  io_uring_prep_poll_add(Arm(*cq_op_), verbs_->completion_fd(), POLLIN);
}

void RdmaTransportImpl::OnCqReadable(int res) {
  if (shutting_down_ && res == -ECANCELED) return;
  verbs_->ConsumeCqEvents();
  // Re-arm before draining: a completion that lands after the drain raises a new event.
  absl::Status s = verbs_->ArmCq();
  if (!s.ok()) DSM_LOG(ERROR) << "rdma: " << s;
  DrainCq();
  if (!shutting_down_) ArmCqPoll();
}

void RdmaTransportImpl::DrainCq() {
  rdma::Completion batch[32];
  for (;;) {
    absl::StatusOr<size_t> n = verbs_->PollCq(absl::MakeSpan(batch));
    if (!n.ok()) {
      DSM_LOG(ERROR) << "rdma: " << n.status();
      return;
    }
    for (size_t i = 0; i < *n; ++i) HandleCompletion(batch[i]);
    if (*n < 32) break;
  }
  for (auto& p : peers_) {
    if (p) Flush(*p);
  }
}

void RdmaTransportImpl::HandleCompletion(const rdma::Completion& c) {
  const NodeId id = static_cast<NodeId>(c.wr_id >> 56);
  const auto kind = static_cast<WrKind>((c.wr_id >> 48) & 0xff);
  const uint32_t idx = static_cast<uint32_t>(c.wr_id);
  if (id >= cluster_ || id == self_) {
    DSM_LOG(ERROR) << "rdma: completion with foreign wr_id " << c.wr_id;
    return;
  }
  Peer& p = *peers_[id];
  if (kind == WrKind::kSend && idx < p.send_info.size()) {
    // Buffers come back whatever the status: after an error the QP is dead anyway.
    SendBufInfo& info = p.send_info[idx];
    if (info.slot >= 0) p.local_slot_busy[static_cast<size_t>(info.slot)] = false;
    if (info.credit && c.status == rdma::kWcSuccess) p.fc.OnCreditMessageCompleted();
    info = SendBufInfo{};
    p.free_send.push_back(idx);
  }
  if (c.status != rdma::kWcSuccess) {
    ++rdma_counters_.error_completions;
    if (p.state != ConnState::kDown) {
      const char* what = kind == WrKind::kRecv   ? "receive"
                         : kind == WrKind::kSend ? "send"
                                                 : "RDMA write";
      MarkDown(p, absl::UnavailableError(absl::StrFormat(
                      "rdma: %s to/from node %d failed: %s (vendor error 0x%x)", what, id,
                      rdma::WcStatusName(c.status), c.vendor_err)));
    }
    return;
  }
  if (kind == WrKind::kRecv && idx < bufs_per_peer()) {
    HandleRecv(p, idx,
               absl::MakeConstSpan(p.recv_bufs + size_t{idx} * tuning_.buf_size,
                                   std::min<size_t>(c.byte_len, tuning_.buf_size)));
  }
}

void RdmaTransportImpl::HandleRecv(Peer& p, uint32_t idx, absl::Span<const uint8_t> data) {
  if (p.state == ConnState::kDown) return;
  absl::StatusOr<RdmaHeader> h = rdma::DecodeRdmaHeader(data);
  if (!h.ok()) return BadMessage(p, h.status());
  if (!p.fc.OnReturned(h->credits, h->slots)) {
    return BadMessage(p, absl::InvalidArgumentError(
                             "rdma: peer returned more credits than it was given"));
  }
  // A message arriving proves the peer is RTR: sending is safe even before its "ready".
  BecomeConnected(p);
  if (h->kind == FrameKind::kCredit) return Repost(p, idx);

  absl::StatusOr<Message> m;
  const bool staged = h->kind == FrameKind::kStaged;
  if (staged) {
    if (h->slot != p.fc.expected_recv_slot()) {
      return BadMessage(p, absl::InvalidArgumentError(absl::StrFormat(
                               "rdma: staged payload in slot %d, expected slot %d", h->slot,
                               p.fc.expected_recv_slot())));
    }
    const uint8_t* wire_hdr = data.data() + rdma::kRdmaHeaderSize;
    if (GetN(wire_hdr + 12, 4) != h->payload_len) {
      return BadMessage(p, absl::InvalidArgumentError(
                               "rdma: staged length disagrees with the wire header"));
    }
    std::vector<uint8_t> frame(kWireHeaderSize + h->payload_len);
    std::memcpy(frame.data(), wire_hdr, kWireHeaderSize);
    std::memcpy(frame.data() + kWireHeaderSize, p.recv_slots + size_t{h->slot} * kSlotSize,
                h->payload_len);
    p.fc.OnStagedReceived();
    m = DecodeMessage(frame, cluster_);
  } else {
    m = DecodeMessage(data.subspan(rdma::kRdmaHeaderSize), cluster_);
  }
  if (!m.ok()) return BadMessage(p, m.status());
  if (m->src != p.id) {
    return BadMessage(p, absl::InvalidArgumentError(absl::StrFormat(
                             "rdma: message claims src %d on node %d's QP", m->src, p.id)));
  }
  m->dst = self_;  // the wire header carries no dst
  // The payload is copied out: the buffer and the slot can be reused.
  Repost(p, idx);
  if (p.state == ConnState::kDown) return;
  p.fc.OnProcessed(staged);
  ++counters_.messages_received;
  counters_.bytes_received += kWireHeaderSize + m->payload.size();

  if (!p.up_reported) {
    if (m->type != MsgType::kHello || m->arg != cluster_) {
      return BadMessage(p, absl::InvalidArgumentError(absl::StrFormat(
                               "rdma: first message from node %d is %s, not HELLO", p.id,
                               MsgTypeName(m->type))));
    }
    const Incarnation incarnation = m->req_id;
    if (PeerTable::Verdict v = table_.CheckJoin(p.id, incarnation);
        v.refusal != Refusal::kNone) {
      table_.NoteRefused(p.id);
      return BadMessage(p, v.why);
    }
    p.up_reported = true;
    p.state = ConnState::kUp;
    PeerTable::UpResult up = table_.Up(p.id, incarnation);
    if (up.owed_down) handler_->OnPeerDown(p.id, *up.owed_down);
    handler_->OnPeerUp(p.id, incarnation);
    return;
  }
  if (m->type == MsgType::kHello) {
    return BadMessage(p, absl::InvalidArgumentError("rdma: second HELLO"));
  }
  handler_->OnMessage(*std::move(m));
}

void RdmaTransportImpl::Repost(Peer& p, uint32_t idx) {
  absl::Status s = verbs_->PostRecv(
      p.qpn, MakeWrId(p.id, WrKind::kRecv, idx),
      rdma::Sge{reinterpret_cast<uint64_t>(p.recv_bufs + size_t{idx} * tuning_.buf_size),
                tuning_.buf_size, local_mr_.lkey});
  if (!s.ok()) MarkDown(p, s);
}

// ---------------------------------------------------------------- sending

void RdmaTransportImpl::Send(Message&& m) {
  if (m.dst == self_) {
    m.src = self_;
    return DeliverLocal(std::move(m));
  }
  if (m.dst >= cluster_) {
    DSM_LOG(ERROR) << "rdma: message to unknown node " << m.dst << " dropped";
    return;
  }
  Peer& p = *peers_[m.dst];
  if (p.state == ConnState::kDown) return;
  m.src = self_;
  std::vector<uint8_t> frame;
  EncodeMessage(m, frame);
  if (frame.size() > kWireHeaderSize + kMaxPayload) {
    DSM_LOG(ERROR) << "rdma: " << MsgTypeName(m.type) << " with a " << m.payload.size()
                   << "-byte payload exceeds kMaxPayload; dropped";
    return;
  }
  p.pending.push_back(std::move(frame));
  Flush(p);
}

void RdmaTransportImpl::DeliverLocal(Message&& m) {
  if (loop_ == nullptr) return;
  std::weak_ptr<int> alive = alive_;
  loop_->Post([this, alive, msg = std::move(m)]() mutable {
    if (alive.expired() || shutting_down_) return;
    ++counters_.messages_sent;
    ++counters_.messages_received;
    handler_->OnMessage(std::move(msg));
  });
}

void RdmaTransportImpl::Flush(Peer& p) {
  if (p.state == ConnState::kDown || !p.got_ready) return;
  while (!p.pending.empty()) {
    const std::vector<uint8_t>& frame = p.pending.front();
    const bool staged = frame.size() + rdma::kRdmaHeaderSize > tuning_.buf_size;
    const bool ok = !p.free_send.empty() &&
                    (staged ? p.fc.CanSendStaged() && !p.local_slot_busy[p.fc.next_slot()]
                            : p.fc.CanSendInline());
    if (!ok) {
      if (!p.stalled) ++rdma_counters_.credit_stalls;
      p.stalled = true;
      break;
    }
    p.stalled = false;
    const uint32_t idx = p.free_send.back();
    p.free_send.pop_back();
    uint8_t* buf = p.send_bufs + size_t{idx} * tuning_.buf_size;
    const FlowControl::Returns r = p.fc.TakeReturns();
    RdmaHeader h;
    h.credits = r.credits;
    h.slots = r.slots;
    rdma::SendWr wrs[2];
    size_t nwr = 0;
    if (staged) {
      const uint32_t slot = p.fc.ConsumeStaged();
      const size_t len = frame.size() - kWireHeaderSize;
      uint8_t* src = p.send_slots + size_t{slot} * kSlotSize;
      std::memcpy(src, frame.data() + kWireHeaderSize, len);
      p.local_slot_busy[slot] = true;
      p.send_info[idx] = SendBufInfo{static_cast<int32_t>(slot), false};
      h.kind = FrameKind::kStaged;
      h.slot = static_cast<uint16_t>(slot);
      h.payload_len = static_cast<uint32_t>(len);
      rdma::EncodeRdmaHeader(h, buf);
      std::memcpy(buf + rdma::kRdmaHeaderSize, frame.data(), kWireHeaderSize);
      // Unsignaled: the SEND behind it completes only after it, and frees the slot.
      wrs[nwr++] = rdma::SendWr{MakeWrId(p.id, WrKind::kWrite, slot),
                                rdma::WrOpcode::kRdmaWrite,
                                rdma::Sge{reinterpret_cast<uint64_t>(src),
                                          static_cast<uint32_t>(len), local_mr_.lkey},
                                false, p.remote_slots_addr + size_t{slot} * kSlotSize,
                                p.remote_rkey};
      wrs[nwr++] = rdma::SendWr{
          MakeWrId(p.id, WrKind::kSend, idx), rdma::WrOpcode::kSend,
          rdma::Sge{reinterpret_cast<uint64_t>(buf),
                    static_cast<uint32_t>(rdma::kRdmaHeaderSize + kWireHeaderSize),
                    local_mr_.lkey},
          true, 0, 0};
      ++rdma_counters_.staged_sent;
    } else {
      p.fc.ConsumeInline();
      p.send_info[idx] = SendBufInfo{};
      h.kind = FrameKind::kInline;
      rdma::EncodeRdmaHeader(h, buf);
      std::memcpy(buf + rdma::kRdmaHeaderSize, frame.data(), frame.size());
      wrs[nwr++] = rdma::SendWr{
          MakeWrId(p.id, WrKind::kSend, idx), rdma::WrOpcode::kSend,
          rdma::Sge{reinterpret_cast<uint64_t>(buf),
                    static_cast<uint32_t>(rdma::kRdmaHeaderSize + frame.size()),
                    local_mr_.lkey},
          true, 0, 0};
      ++rdma_counters_.inline_sent;
    }
    ++counters_.messages_sent;
    counters_.bytes_sent += frame.size();
    p.pending.pop_front();
    absl::Status s = verbs_->PostSend(p.qpn, absl::MakeConstSpan(wrs, nwr));
    if (!s.ok()) return MarkDown(p, s);
  }
  if (p.fc.ShouldSendCreditMessage() && !p.free_send.empty()) PostCreditMessage(p);
}

bool RdmaTransportImpl::PostCreditMessage(Peer& p) {
  const uint32_t idx = p.free_send.back();
  p.free_send.pop_back();
  uint8_t* buf = p.send_bufs + size_t{idx} * tuning_.buf_size;
  const FlowControl::Returns r = p.fc.TakeReturns();
  RdmaHeader h;
  h.kind = FrameKind::kCredit;
  h.credits = r.credits;
  h.slots = r.slots;
  rdma::EncodeRdmaHeader(h, buf);
  p.send_info[idx] = SendBufInfo{-1, true};
  p.fc.OnCreditMessagePosted();
  ++rdma_counters_.credit_messages_sent;
  rdma::SendWr wr{MakeWrId(p.id, WrKind::kSend, idx), rdma::WrOpcode::kSend,
                  rdma::Sge{reinterpret_cast<uint64_t>(buf),
                            static_cast<uint32_t>(rdma::kRdmaHeaderSize), local_mr_.lkey},
                  true, 0, 0};
  absl::Status s = verbs_->PostSend(p.qpn, absl::MakeConstSpan(&wr, 1));
  if (!s.ok()) {
    MarkDown(p, s);
    return false;
  }
  return true;
}

// ---------------------------------------------------------------- failure

void RdmaTransportImpl::BadMessage(Peer& p, const absl::Status& why) {
  ++counters_.bad_messages;
  DSM_LOG(ERROR) << "rdma: closing connection to node " << p.id << ": " << why;
  MarkDown(p, why);
}

void RdmaTransportImpl::MarkDown(Peer& p, const absl::Status& why) {
  if (p.state == ConnState::kDown) return;
  p.state = ConnState::kDown;
  table_.Down(p.id, why);
  p.pending.clear();
  if (p.has_qp) {
    absl::Status s = verbs_->ModifyToError(p.qpn);  // outstanding work completes flushed
    if (!s.ok()) DSM_LOG(WARNING) << "rdma: " << s;
  }
  if (p.op && p.op->in_flight) {
    Cancel(*p.op);  // its completion closes the socket
  } else if (p.fd >= 0) {
    close(p.fd);
    p.fd = -1;
  }
  std::optional<absl::Status> report = table_.TakeDownReport(p.id);
  if (!shutting_down_ && handler_ != nullptr && report) handler_->OnPeerDown(p.id, *report);
}

void RdmaTransportImpl::Shutdown(absl::Time deadline) {
  if (shut_down_ || !started_) {
    shut_down_ = true;
    return;
  }
  // Flush what is queued while the peers are reachable.
  auto busy = [&] {
    for (auto& p : peers_) {
      if (p && p->state != ConnState::kDown && p->got_ready &&
          (!p->pending.empty() || p->free_send.size() < bufs_per_peer())) {
        return true;
      }
    }
    return false;
  };
  while (busy() && absl::Now() < deadline) loop_->Poll(absl::ZeroDuration(), absl::Milliseconds(1));

  shutting_down_ = true;
  for (auto& p : peers_) {
    if (p) MarkDown(*p, absl::CancelledError("shutdown"));
  }
  Cancel(*accept_op_);
  Cancel(*cq_op_);
  Cancel(*timeout_op_);
  for (auto& a : accepted_) Cancel(*a->op);
  auto ops_pending = [&] {
    if (accept_op_->in_flight || cq_op_->in_flight || timeout_op_->in_flight) return true;
    for (auto& p : peers_) {
      if (p && p->op && p->op->in_flight) return true;
    }
    for (auto& a : accepted_) {
      if (a->op->in_flight) return true;
    }
    return false;
  };
  // Ring operations point into this object: wait for every one to finish (cancellation is
  // prompt; the bound only guards against a broken ring).
  const absl::Time hard = absl::Now() + absl::Seconds(5);
  while (ops_pending() && absl::Now() < hard) {
    loop_->Poll(absl::ZeroDuration(), absl::Milliseconds(10));
  }
  if (ops_pending()) {
    DSM_LOG(ERROR) << "rdma: ring operations still pending at shutdown";
  }
  for (auto& a : accepted_) {
    if (a->fd >= 0) close(a->fd);
  }
  accepted_.clear();
  for (auto& p : peers_) {
    if (p && p->fd >= 0) {
      close(p->fd);
      p->fd = -1;
    }
  }
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    listen_fd_ = -1;
  }
  shut_down_ = true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> CreateRdmaTransportWithVerbs(
    const Options& options, const RdmaTuning& tuning, std::unique_ptr<rdma::VerbsOps> verbs) {
  if (options.peers.empty() || options.peers.size() > kMaxNodes ||
      options.node_id >= options.peers.size()) {
    return absl::InvalidArgumentError(
        "rdma: Options::peers must list 1..64 nodes and node_id must index it");
  }
  if (tuning.recv_credits < 2 || tuning.ctrl_reserve < 1 || tuning.staging_slots < 1 ||
      tuning.staging_slots > 0xffff || tuning.recv_credits > 0xffff ||
      tuning.buf_size < rdma::kRdmaHeaderSize + kWireHeaderSize + 64) {
    return absl::InvalidArgumentError("rdma: RdmaTuning out of range");
  }
  DSM_RETURN_IF_ERROR(rdma::CheckMemlock(RdmaRegisteredBytes(tuning, options.peers.size())));
  auto auth = admission::ResolveAdmission(options);
  if (!auth.ok()) return auth.status();
  auto t = std::make_unique<RdmaTransportImpl>(options, tuning, std::move(verbs),
                                               std::move(*auth));
  DSM_RETURN_IF_ERROR(t->Init());
  return std::unique_ptr<Transport>(std::move(t));
}

absl::StatusOr<std::unique_ptr<Transport>> CreateRdmaTransport(const Options& options) {
  // A missing key is reported before the device is opened (the opt-out's WARNING is logged
  // once, by CreateRdmaTransportWithVerbs).
  if (!options.insecure_no_cluster_key) {
    if (auto auth = admission::ResolveAdmission(options); !auth.ok()) return auth.status();
  }
  DSM_ASSIGN_OR_RETURN(std::unique_ptr<rdma::VerbsOps> verbs,
                       rdma::OpenIbvDevice(options.rdma_device, options.rdma_port,
                                           options.rdma_gid_index));
  return CreateRdmaTransportWithVerbs(options, RdmaTuning{}, std::move(verbs));
}

RdmaCounters GetRdmaCounters(const Transport& t) {
  const auto* r = dynamic_cast<const RdmaTransportImpl*>(&t);
  return r ? r->rdma_counters() : RdmaCounters{};
}

}  // namespace dsm
