#include "rdma/fake_verbs.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace dsm::rdma::testing {

// ibv_wc_status values the fake produces.
constexpr int kLocLenErr = 1;
constexpr int kLocProtErr = 4;
constexpr int kRemAccessErr = 10;
constexpr int kRetryExcErr = 12;

const char* FakeQpStateName(FakeQpState s) {
  switch (s) {
    case FakeQpState::kReset: return "RESET";
    case FakeQpState::kInit: return "INIT";
    case FakeQpState::kRtr: return "RTR";
    case FakeQpState::kRts: return "RTS";
    case FakeQpState::kError: return "ERR";
  }
  return "?";
}

struct FakeFabric::Qp {
  uint32_t qpn = 0;
  FakeDevice* dev = nullptr;
  FakeQpState state = FakeQpState::kReset;
  std::vector<FakeQpState> history{FakeQpState::kReset};
  uint32_t remote = 0;
  uint32_t max_send = 0, max_recv = 0;
  struct Recv {
    uint64_t wr_id;
    Sge sge;
  };
  std::deque<Recv> recvq;
  std::deque<SendWr> sendq;  // posted, not yet executed (head may wait for RNR)
};

class FakeDevice final : public VerbsOps {
 public:
  FakeDevice(FakeFabric* f, const std::string& name, LinkLayer link, uint16_t lid) : f_(f) {
    port_.device = name;
    port_.port = 1;
    port_.link_layer = link;
    port_.lid = link == LinkLayer::kInfiniBand ? lid : 0;
    port_.active_mtu = 5;  // IBV_MTU_4096
    if (link == LinkLayer::kEthernet) {
      // ::ffff:10.0.<lid> as a RoCE v2 GID at index 1.
      port_.gid_index = 1;
      port_.gid.raw[10] = 0xff;
      port_.gid.raw[11] = 0xff;
      port_.gid.raw[12] = 10;
      port_.gid.raw[14] = static_cast<uint8_t>(lid >> 8);
      port_.gid.raw[15] = static_cast<uint8_t>(lid);
    } else {
      port_.gid_index = -1;
      port_.gid.raw[0] = 0xfe;
      port_.gid.raw[1] = 0x80;
      port_.gid.raw[15] = static_cast<uint8_t>(lid);
    }
    efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  }
  ~FakeDevice() override {
    std::lock_guard<std::recursive_mutex> l(f_->mu_);
    for (auto& [qpn, qp] : f_->qps_) {
      if (qp->dev == this) {
        qp->dev = nullptr;
        qp->state = FakeQpState::kError;
      }
    }
    f_->devices_.erase(std::remove(f_->devices_.begin(), f_->devices_.end(), this),
                       f_->devices_.end());
    if (efd_ >= 0) close(efd_);
  }

  const PortInfo& port() const override { return port_; }

  absl::StatusOr<MemoryRegion> RegisterMemory(void* addr, size_t len,
                                              bool remote_write) override {
    std::lock_guard<std::recursive_mutex> l(f_->mu_);
    MemoryRegion r;
    r.addr = static_cast<uint8_t*>(addr);
    r.length = len;
    r.lkey = f_->next_key_++;
    r.rkey = f_->next_key_++;
    r.handle = r.lkey;
    mrs_.push_back(Mr{r, remote_write});
    return r;
  }
  void DeregisterMemory(const MemoryRegion& r) override {
    std::lock_guard<std::recursive_mutex> l(f_->mu_);
    mrs_.erase(std::remove_if(mrs_.begin(), mrs_.end(),
                              [&](const Mr& m) { return m.r.handle == r.handle; }),
               mrs_.end());
  }

  absl::Status CreateCq(int entries) override {
    cq_capacity_ = static_cast<size_t>(entries);
    return absl::OkStatus();
  }
  int completion_fd() const override { return efd_; }
  absl::Status ArmCq() override {
    std::lock_guard<std::recursive_mutex> l(f_->mu_);
    armed_ = true;
    if (!cq_.empty()) Notify();  // as hardware: completions already queued raise an event
    return absl::OkStatus();
  }
  void ConsumeCqEvents() override {
    uint64_t v;
    while (read(efd_, &v, sizeof(v)) == sizeof(v)) {
    }
  }
  absl::StatusOr<size_t> PollCq(absl::Span<Completion> out) override {
    std::lock_guard<std::recursive_mutex> l(f_->mu_);
    if (overrun_) return absl::InternalError("fake CQ overrun");
    size_t n = 0;
    while (n < out.size() && !cq_.empty()) {
      out[n++] = cq_.front();
      cq_.pop_front();
    }
    return n;
  }

  absl::StatusOr<uint32_t> CreateQp(uint32_t max_send_wr, uint32_t max_recv_wr) override {
    std::lock_guard<std::recursive_mutex> l(f_->mu_);
    if (cq_capacity_ == 0) return absl::FailedPreconditionError("fake: CreateQp before CreateCq");
    auto qp = std::make_unique<FakeFabric::Qp>();
    qp->qpn = f_->next_qpn_++;
    qp->dev = this;
    qp->max_send = max_send_wr;
    qp->max_recv = max_recv_wr;
    uint32_t qpn = qp->qpn;
    f_->qps_[qpn] = std::move(qp);
    f_->order_.push_back(qpn);
    return qpn;
  }

  absl::Status ModifyToInit(uint32_t qpn) override {
    return Transition(qpn, FakeQpState::kReset, FakeQpState::kInit);
  }
  absl::Status ModifyToRtr(uint32_t qpn, const QpEndpoint& remote) override {
    std::lock_guard<std::recursive_mutex> l(f_->mu_);
    FakeFabric::Qp* r = f_->FindQp(remote.qp_num);
    if (r == nullptr || r->dev == nullptr) {
      return absl::InvalidArgumentError("fake RTR: remote QP does not exist");
    }
    const PortInfo& rp = r->dev->port_;
    const bool grh = remote.use_grh || port_.link_layer == LinkLayer::kEthernet;
    if (grh ? std::memcmp(rp.gid.raw, remote.gid.raw, 16) != 0 : rp.lid != remote.lid) {
      return absl::InvalidArgumentError("fake RTR: address does not reach the remote QP");
    }
    if (grh && port_.gid_index < 0) return absl::InvalidArgumentError("fake RTR: no sgid");
    absl::Status s = Transition(qpn, FakeQpState::kInit, FakeQpState::kRtr);
    if (s.ok()) f_->FindQp(qpn)->remote = remote.qp_num;
    return s;
  }
  absl::Status ModifyToRts(uint32_t qpn, uint32_t) override {
    return Transition(qpn, FakeQpState::kRtr, FakeQpState::kRts);
  }
  absl::Status ModifyToError(uint32_t qpn) override {
    std::lock_guard<std::recursive_mutex> l(f_->mu_);
    FakeFabric::Qp* qp = Mine(qpn);
    if (qp == nullptr) return absl::NotFoundError("fake: unknown QP");
    f_->SetError(*qp);
    return absl::OkStatus();
  }
  void DestroyQp(uint32_t qpn) override {
    std::lock_guard<std::recursive_mutex> l(f_->mu_);
    FakeFabric::Qp* qp = Mine(qpn);
    if (qp == nullptr) return;
    qp->dev = nullptr;
    qp->state = FakeQpState::kError;
    qp->recvq.clear();
    qp->sendq.clear();
  }

  absl::Status PostRecv(uint32_t qpn, uint64_t wr_id, const Sge& sge) override {
    std::lock_guard<std::recursive_mutex> l(f_->mu_);
    FakeFabric::Qp* qp = Mine(qpn);
    if (qp == nullptr) return absl::NotFoundError("fake: unknown QP");
    if (qp->state == FakeQpState::kReset || qp->recvq.size() >= qp->max_recv) {
      ++f_->rejected_;
      return absl::InvalidArgumentError("fake: ibv_post_recv rejected (RESET or queue full)");
    }
    if (qp->state == FakeQpState::kError) {
      Complete(Completion{wr_id, kWcWrFlushErr, WcOpcode::kRecv, 0, qpn, 0});
      return absl::OkStatus();
    }
    qp->recvq.push_back(FakeFabric::Qp::Recv{wr_id, sge});
    // A sender waiting on RNR for this QP retries now.
    if (FakeFabric::Qp* peer = f_->FindQp(qp->remote); peer && peer->remote == qpn) {
      f_->Progress(*peer);
    }
    return absl::OkStatus();
  }

  absl::Status PostSend(uint32_t qpn, absl::Span<const SendWr> wrs) override {
    std::lock_guard<std::recursive_mutex> l(f_->mu_);
    FakeFabric::Qp* qp = Mine(qpn);
    if (qp == nullptr) return absl::NotFoundError("fake: unknown QP");
    if (qp->state != FakeQpState::kRts && qp->state != FakeQpState::kError) {
      ++f_->rejected_;
      return absl::InvalidArgumentError(absl::StrFormat(
          "fake: ibv_post_send on a QP in %s", FakeQpStateName(qp->state)));
    }
    if (qp->sendq.size() + wrs.size() > qp->max_send) {
      ++f_->rejected_;
      return absl::ResourceExhaustedError("fake: send queue full");
    }
    for (const SendWr& w : wrs) qp->sendq.push_back(w);
    f_->Progress(*qp);
    return absl::OkStatus();
  }

  // --- used by the fabric (mutex held) ---
  void Complete(const Completion& c) {
    if (cq_.size() >= cq_capacity_) {
      overrun_ = true;
      return;
    }
    cq_.push_back(c);
    if (armed_) Notify();
  }
  // The registered region holding [addr, addr+len) under `key` (lkey, or rkey if remote).
  bool Check(uint64_t addr, uint64_t len, uint32_t key, bool remote) const {
    for (const Mr& m : mrs_) {
      if ((remote ? m.r.rkey : m.r.lkey) != key) continue;
      if (remote && !m.remote_write) return false;
      const uint64_t base = reinterpret_cast<uint64_t>(m.r.addr);
      return addr >= base && addr + len <= base + m.r.length && addr + len >= addr;
    }
    return false;
  }

 private:
  friend class FakeFabric;
  struct Mr {
    MemoryRegion r;
    bool remote_write;
  };

  void Notify() {
    armed_ = false;
    uint64_t one = 1;
    ssize_t n = write(efd_, &one, sizeof(one));
    (void)n;
  }

  FakeFabric::Qp* Mine(uint32_t qpn) {
    FakeFabric::Qp* qp = f_->FindQp(qpn);
    return qp != nullptr && qp->dev == this ? qp : nullptr;
  }

  absl::Status Transition(uint32_t qpn, FakeQpState from, FakeQpState to) {
    std::lock_guard<std::recursive_mutex> l(f_->mu_);
    FakeFabric::Qp* qp = Mine(qpn);
    if (qp == nullptr) return absl::NotFoundError("fake: unknown QP");
    if (qp->state != from) {
      return absl::InvalidArgumentError(absl::StrFormat("fake: ibv_modify_qp %s -> %s",
                                                        FakeQpStateName(qp->state),
                                                        FakeQpStateName(to)));
    }
    qp->state = to;
    qp->history.push_back(to);
    return absl::OkStatus();
  }

  FakeFabric* f_;
  PortInfo port_;
  int efd_ = -1;
  bool armed_ = false;
  bool overrun_ = false;
  size_t cq_capacity_ = 0;
  std::deque<Completion> cq_;
  std::vector<Mr> mrs_;
};

FakeFabric::FakeFabric() = default;
FakeFabric::~FakeFabric() = default;

std::unique_ptr<VerbsOps> FakeFabric::NewDevice(const std::string& name, LinkLayer link) {
  std::lock_guard<std::recursive_mutex> l(mu_);
  auto d = std::make_unique<FakeDevice>(this, name, link, next_lid_++);
  devices_.push_back(d.get());
  return d;
}

FakeFabric::Qp* FakeFabric::FindQp(uint32_t qpn) const {
  auto it = qps_.find(qpn);
  return it == qps_.end() ? nullptr : it->second.get();
}

void FakeFabric::SetError(Qp& qp) {
  if (qp.state != FakeQpState::kError) {
    qp.state = FakeQpState::kError;
    qp.history.push_back(FakeQpState::kError);
  }
  if (qp.dev == nullptr) return;
  // Everything outstanding completes flushed, signaled or not.
  for (const SendWr& w : qp.sendq) {
    qp.dev->Complete(Completion{w.wr_id, kWcWrFlushErr,
                                w.opcode == WrOpcode::kSend ? WcOpcode::kSend
                                                            : WcOpcode::kRdmaWrite,
                                0, qp.qpn, 0});
  }
  qp.sendq.clear();
  for (const Qp::Recv& r : qp.recvq) {
    qp.dev->Complete(Completion{r.wr_id, kWcWrFlushErr, WcOpcode::kRecv, 0, qp.qpn, 0});
  }
  qp.recvq.clear();
}

void FakeFabric::Progress(Qp& qp) {
  while (!qp.sendq.empty() && qp.dev != nullptr) {
    if (qp.state == FakeQpState::kError) return SetError(qp);
    const SendWr w = qp.sendq.front();
    const WcOpcode op = w.opcode == WrOpcode::kSend ? WcOpcode::kSend : WcOpcode::kRdmaWrite;
    auto fail = [&](int status) {
      qp.sendq.pop_front();
      qp.dev->Complete(Completion{w.wr_id, status, op, 0, qp.qpn, 0});
      SetError(qp);
    };
    if (!qp.dev->Check(w.sge.addr, w.sge.length, w.sge.lkey, false)) return fail(kLocProtErr);
    if (w.opcode == WrOpcode::kSend) {
      auto f = faults_.find(qp.qpn);
      if (f != faults_.end() && f->second.status != 0) {
        int st = f->second.status;
        faults_.erase(f);
        return fail(st);
      }
    }
    Qp* r = FindQp(qp.remote);
    if (r == nullptr || r->dev == nullptr || r->remote != qp.qpn ||
        (r->state != FakeQpState::kRtr && r->state != FakeQpState::kRts)) {
      return fail(kRetryExcErr);  // nobody answers: the requester times out
    }
    if (w.opcode == WrOpcode::kRdmaWrite) {
      if (!r->dev->Check(w.remote_addr, w.sge.length, w.rkey, true)) {
        fail(kRemAccessErr);
        SetError(*r);  // the responder's QP fails too
        return;
      }
      std::memcpy(reinterpret_cast<void*>(w.remote_addr),
                  reinterpret_cast<const void*>(w.sge.addr), w.sge.length);
      ++writes_;
    } else {
      if (r->recvq.empty()) {  // RNR: the NIC retries until a receive is posted
        ++rnr_waits_;
        return;
      }
      Qp::Recv rv = r->recvq.front();
      r->recvq.pop_front();
      if (w.sge.length > rv.sge.length ||
          !r->dev->Check(rv.sge.addr, rv.sge.length, rv.sge.lkey, false)) {
        r->dev->Complete(Completion{rv.wr_id, kLocLenErr, WcOpcode::kRecv, 0, r->qpn, 0});
        SetError(*r);
        return fail(kRemAccessErr);
      }
      uint8_t* dst = reinterpret_cast<uint8_t*>(rv.sge.addr);
      std::memcpy(dst, reinterpret_cast<const void*>(w.sge.addr), w.sge.length);
      auto f = faults_.find(qp.qpn);
      if (f != faults_.end() && f->second.corrupt) {
        if (f->second.offset < w.sge.length) dst[f->second.offset] ^= 0xff;
        faults_.erase(f);
      }
      ++sends_;
      r->dev->Complete(Completion{rv.wr_id, kWcSuccess, WcOpcode::kRecv, w.sge.length, r->qpn, 0});
    }
    qp.sendq.pop_front();
    if (w.signaled) qp.dev->Complete(Completion{w.wr_id, kWcSuccess, op, w.sge.length, qp.qpn, 0});
  }
}

void FakeFabric::FailNextSend(uint32_t qpn, int wc_status) {
  std::lock_guard<std::recursive_mutex> l(mu_);
  faults_[qpn] = Fault{wc_status, false, 0};
}

void FakeFabric::CorruptNextSend(uint32_t qpn, size_t offset) {
  std::lock_guard<std::recursive_mutex> l(mu_);
  faults_[qpn] = Fault{0, true, offset};
}

void FakeFabric::BreakQp(uint32_t qpn) {
  std::lock_guard<std::recursive_mutex> l(mu_);
  if (Qp* qp = FindQp(qpn)) SetError(*qp);
}

std::vector<FakeQpState> FakeFabric::StateHistory(uint32_t qpn) const {
  std::lock_guard<std::recursive_mutex> l(mu_);
  Qp* qp = FindQp(qpn);
  return qp ? qp->history : std::vector<FakeQpState>{};
}
FakeQpState FakeFabric::State(uint32_t qpn) const {
  std::lock_guard<std::recursive_mutex> l(mu_);
  Qp* qp = FindQp(qpn);
  return qp ? qp->state : FakeQpState::kError;
}
uint32_t FakeFabric::RemoteOf(uint32_t qpn) const {
  std::lock_guard<std::recursive_mutex> l(mu_);
  Qp* qp = FindQp(qpn);
  return qp ? qp->remote : 0;
}
std::vector<uint32_t> FakeFabric::Qps() const {
  std::lock_guard<std::recursive_mutex> l(mu_);
  return order_;
}
uint64_t FakeFabric::rnr_waits() const {
  std::lock_guard<std::recursive_mutex> l(mu_);
  return rnr_waits_;
}
uint64_t FakeFabric::sends_delivered() const {
  std::lock_guard<std::recursive_mutex> l(mu_);
  return sends_;
}
uint64_t FakeFabric::writes_delivered() const {
  std::lock_guard<std::recursive_mutex> l(mu_);
  return writes_;
}
uint64_t FakeFabric::rejected_posts() const {
  std::lock_guard<std::recursive_mutex> l(mu_);
  return rejected_;
}

}  // namespace dsm::rdma::testing
