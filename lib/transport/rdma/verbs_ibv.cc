// The real VerbsOps: libibverbs calls, nothing else. Compiled everywhere libibverbs-dev is
// installed; exercised only on hosts with an RDMA device (see docs/RDMA.md). A build with
// DSM_WITH_RDMA=0 keeps the device-independent helpers and OpenIbvDevice fails, saying so.
#include <fcntl.h>
#if DSM_WITH_RDMA
#include <infiniband/verbs.h>
#endif
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "transport/rdma/verbs.h"

namespace dsm::rdma {

bool Gid::IsZero() const {
  for (uint8_t b : raw) {
    if (b != 0) return false;
  }
  return true;
}

std::string Gid::ToString() const {
  std::string s;
  for (int i = 0; i < 16; i += 2) {
    if (i > 0) s += ':';
    absl::StrAppendFormat(&s, "%02x%02x", raw[i], raw[i + 1]);
  }
  return s;
}

#if DSM_WITH_RDMA
const char* WcStatusName(int status) {
  return ibv_wc_status_str(static_cast<ibv_wc_status>(status));
}

static_assert(kWcWrFlushErr == IBV_WC_WR_FLUSH_ERR);
static_assert(kWcSuccess == IBV_WC_SUCCESS);
#else
// Without libibverbs the names are ours, by the status values the verbs ABI fixes, so a
// transport driven through a fake (tests) still says what failed.
const char* WcStatusName(int status) {
  static constexpr const char* kNames[] = {
      "success",                         "local length error",
      "local QP operation error",        "local EE context operation error",
      "local protection error",          "Work Request Flushed Error",
      "memory management operation error", "bad response error",
      "local access error",              "remote invalid request error",
      "remote access error",             "remote operation error",
      "transport retry counter exceeded", "RNR retry counter exceeded",
      "local RDD violation error",       "remote invalid RD request",
      "aborted error",                   "invalid EE context number",
      "invalid EE context state",        "fatal error",
      "response timeout error",          "general error",
      "tag matching error",              "tag matching rendezvous error"};
  constexpr int kCount = static_cast<int>(sizeof(kNames) / sizeof(kNames[0]));
  return status >= 0 && status < kCount ? kNames[status] : "unknown error";
}
static_assert(kWcSuccess == 0 && kWcWrFlushErr == 5);
#endif

absl::Status CheckMemlock(size_t bytes, uint64_t limit, bool has_cap_ipc_lock) {
  if (has_cap_ipc_lock || limit == static_cast<uint64_t>(RLIM_INFINITY) || bytes <= limit) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrFormat(
      "RDMA transport needs %u bytes of registered (pinned) memory but RLIMIT_MEMLOCK is %u "
      "bytes and the process lacks CAP_IPC_LOCK; raise RLIMIT_MEMLOCK: ulimit -l unlimited, or "
      "LimitMEMLOCK=infinity in the systemd unit, or a 'memlock unlimited' line in "
      "/etc/security/limits.conf (or lower the RDMA staging slots/credits)",
      bytes, limit));
}

namespace {

bool HasCapIpcLock() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      unsigned long long caps = std::strtoull(line.c_str() + 7, nullptr, 16);
      return (caps >> 14) & 1;  // CAP_IPC_LOCK = 14
    }
  }
  return false;
}

}  // namespace

absl::Status CheckMemlock(size_t bytes) {
  rlimit rl{};
  if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0) return absl::ErrnoToStatus(errno, "getrlimit");
  return CheckMemlock(bytes, rl.rlim_cur == RLIM_INFINITY ? RLIM_INFINITY : rl.rlim_cur,
                      HasCapIpcLock());
}

#if DSM_WITH_RDMA
namespace {

class IbvVerbs final : public VerbsOps {
 public:
  ~IbvVerbs() override {
    for (auto& [qpn, qp] : qps_) ibv_destroy_qp(qp);
    for (auto& [h, mr] : mrs_) ibv_dereg_mr(mr);
    if (cq_ != nullptr) {
      if (unacked_ > 0) ibv_ack_cq_events(cq_, unacked_);
      ibv_destroy_cq(cq_);
    }
    if (channel_ != nullptr) ibv_destroy_comp_channel(channel_);
    if (pd_ != nullptr) ibv_dealloc_pd(pd_);
    if (ctx_ != nullptr) ibv_close_device(ctx_);
  }

  absl::Status Open(const std::string& device, uint8_t port, int gid_index) {
    int n = 0;
    ibv_device** list = ibv_get_device_list(&n);
    if (list == nullptr || n == 0) {
      if (list != nullptr) ibv_free_device_list(list);
      return absl::UnavailableError(
          "no RDMA device: ibv_get_device_list found none (load the NIC's driver, or check "
          "ibv_devices; see docs/RDMA.md)");
    }
    ibv_device* chosen = nullptr;
    std::string names;
    for (int i = 0; i < n; ++i) {
      const char* name = ibv_get_device_name(list[i]);
      absl::StrAppend(&names, i ? ", " : "", name);
      if (chosen == nullptr && (device.empty() || device == name)) chosen = list[i];
    }
    if (chosen == nullptr) {
      ibv_free_device_list(list);
      return absl::NotFoundError(
          absl::StrCat("RDMA device '", device, "' not found; devices: ", names));
    }
    port_.device = ibv_get_device_name(chosen);
    ctx_ = ibv_open_device(chosen);
    ibv_free_device_list(list);
    if (ctx_ == nullptr) return absl::ErrnoToStatus(errno, "ibv_open_device " + port_.device);

    ibv_port_attr pa{};
    if (int rc = ibv_query_port(ctx_, port, &pa); rc != 0) {
      return absl::ErrnoToStatus(rc, absl::StrCat("ibv_query_port ", port_.device, " port ",
                                                  static_cast<int>(port)));
    }
    if (pa.state != IBV_PORT_ACTIVE) {
      return absl::UnavailableError(absl::StrFormat(
          "RDMA port %s/%d is %s, not ACTIVE (check the cable/switch, ibv_devinfo)",
          port_.device, port, ibv_port_state_str(pa.state)));
    }
    port_.port = port;
    port_.lid = pa.lid;
    port_.active_mtu = pa.active_mtu;
    port_.link_layer = pa.link_layer == IBV_LINK_LAYER_ETHERNET ? LinkLayer::kEthernet
                                                                 : LinkLayer::kInfiniBand;
    DSM_RETURN_IF_ERROR(PickGid(pa, gid_index));

    pd_ = ibv_alloc_pd(ctx_);
    if (pd_ == nullptr) return absl::ErrnoToStatus(errno, "ibv_alloc_pd");
    channel_ = ibv_create_comp_channel(ctx_);
    if (channel_ == nullptr) return absl::ErrnoToStatus(errno, "ibv_create_comp_channel");
    int fl = fcntl(channel_->fd, F_GETFL);
    if (fl < 0 || fcntl(channel_->fd, F_SETFL, fl | O_NONBLOCK) < 0) {
      return absl::ErrnoToStatus(errno, "fcntl(O_NONBLOCK) on the completion channel");
    }
    return absl::OkStatus();
  }

  const PortInfo& port() const override { return port_; }

  absl::StatusOr<MemoryRegion> RegisterMemory(void* addr, size_t len,
                                              bool remote_write) override {
    int access = IBV_ACCESS_LOCAL_WRITE | (remote_write ? IBV_ACCESS_REMOTE_WRITE : 0);
    ibv_mr* mr = ibv_reg_mr(pd_, addr, len, access);
    if (mr == nullptr) {
      int e = errno;
      if (e == ENOMEM || e == EPERM) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "ibv_reg_mr(%u bytes): %s; raise RLIMIT_MEMLOCK: ulimit -l unlimited, or "
            "LimitMEMLOCK=infinity in systemd, or /etc/security/limits.conf",
            len, std::strerror(e)));
      }
      return absl::ErrnoToStatus(e, "ibv_reg_mr");
    }
    MemoryRegion r;
    r.addr = static_cast<uint8_t*>(addr);
    r.length = len;
    r.lkey = mr->lkey;
    r.rkey = mr->rkey;
    r.handle = ++next_handle_;
    mrs_[r.handle] = mr;
    return r;
  }

  void DeregisterMemory(const MemoryRegion& r) override {
    auto it = mrs_.find(r.handle);
    if (it == mrs_.end()) return;
    ibv_dereg_mr(it->second);
    mrs_.erase(it);
  }

  absl::Status CreateCq(int entries) override {
    cq_ = ibv_create_cq(ctx_, entries, nullptr, channel_, 0);
    if (cq_ == nullptr) return absl::ErrnoToStatus(errno, "ibv_create_cq");
    return absl::OkStatus();
  }

  int completion_fd() const override { return channel_ ? channel_->fd : -1; }

  absl::Status ArmCq() override {
    if (int rc = ibv_req_notify_cq(cq_, 0); rc != 0) {
      return absl::ErrnoToStatus(rc, "ibv_req_notify_cq");
    }
    return absl::OkStatus();
  }

  void ConsumeCqEvents() override {
    ibv_cq* ev_cq = nullptr;
    void* ev_ctx = nullptr;
    while (ibv_get_cq_event(channel_, &ev_cq, &ev_ctx) == 0) ++unacked_;
    if (unacked_ > 0) {
      ibv_ack_cq_events(cq_, unacked_);
      unacked_ = 0;
    }
  }

  absl::StatusOr<size_t> PollCq(absl::Span<Completion> out) override {
    ibv_wc wc[32];
    int want = static_cast<int>(std::min<size_t>(out.size(), 32));
    int n = ibv_poll_cq(cq_, want, wc);
    if (n < 0) return absl::InternalError("ibv_poll_cq failed");
    for (int i = 0; i < n; ++i) {
      Completion& c = out[i];
      c.wr_id = wc[i].wr_id;
      c.status = wc[i].status;
      c.byte_len = wc[i].byte_len;
      c.qp_num = wc[i].qp_num;
      c.vendor_err = wc[i].vendor_err;
      switch (wc[i].opcode) {
        case IBV_WC_SEND: c.opcode = WcOpcode::kSend; break;
        case IBV_WC_RDMA_WRITE: c.opcode = WcOpcode::kRdmaWrite; break;
        case IBV_WC_RECV: c.opcode = WcOpcode::kRecv; break;
        default: c.opcode = WcOpcode::kOther; break;
      }
    }
    return static_cast<size_t>(n);
  }

  absl::StatusOr<uint32_t> CreateQp(uint32_t max_send_wr, uint32_t max_recv_wr) override {
    ibv_qp_init_attr a{};
    a.send_cq = cq_;
    a.recv_cq = cq_;
    a.qp_type = IBV_QPT_RC;
    a.sq_sig_all = 0;
    a.cap.max_send_wr = max_send_wr;
    a.cap.max_recv_wr = max_recv_wr;
    a.cap.max_send_sge = 1;
    a.cap.max_recv_sge = 1;
    ibv_qp* qp = ibv_create_qp(pd_, &a);
    if (qp == nullptr) return absl::ErrnoToStatus(errno, "ibv_create_qp");
    qps_[qp->qp_num] = qp;
    return qp->qp_num;
  }

  absl::Status ModifyToInit(uint32_t qpn) override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_INIT;
    a.pkey_index = 0;
    a.port_num = port_.port;
    a.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
    return Modify(qpn, a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS,
                  "INIT");
  }

  absl::Status ModifyToRtr(uint32_t qpn, const QpEndpoint& remote) override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = static_cast<ibv_mtu>(std::min(port_.active_mtu, remote.mtu));
    a.dest_qp_num = remote.qp_num;
    a.rq_psn = remote.psn;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 12;  // 0.64 ms
    a.ah_attr.dlid = remote.lid;
    a.ah_attr.sl = 0;
    a.ah_attr.src_path_bits = 0;
    a.ah_attr.port_num = port_.port;
    if (remote.use_grh || port_.link_layer == LinkLayer::kEthernet) {
      if (port_.gid_index < 0) {
        return absl::FailedPreconditionError(
            "the peer routes with a GID but this node has none; set Options::rdma_gid_index");
      }
      a.ah_attr.is_global = 1;
      std::memcpy(a.ah_attr.grh.dgid.raw, remote.gid.raw, 16);
      a.ah_attr.grh.sgid_index = static_cast<uint8_t>(port_.gid_index);
      a.ah_attr.grh.hop_limit = 64;
      a.ah_attr.grh.traffic_class = 0;
      a.ah_attr.grh.flow_label = 0;
    }
    return Modify(qpn, a,
                  IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                      IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER,
                  "RTR");
  }

  absl::Status ModifyToRts(uint32_t qpn, uint32_t local_psn) override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 14;    // 4.096 us * 2^14 = 67 ms per try
    a.retry_cnt = 7;
    a.rnr_retry = 7;   // retry forever on RNR: the credit scheme bounds how long that lasts
    a.sq_psn = local_psn;
    a.max_rd_atomic = 1;
    return Modify(qpn, a,
                  IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                      IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC,
                  "RTS");
  }

  absl::Status ModifyToError(uint32_t qpn) override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_ERR;
    return Modify(qpn, a, IBV_QP_STATE, "ERR");
  }

  void DestroyQp(uint32_t qpn) override {
    auto it = qps_.find(qpn);
    if (it == qps_.end()) return;
    ibv_destroy_qp(it->second);
    qps_.erase(it);
  }

  absl::Status PostRecv(uint32_t qpn, uint64_t wr_id, const Sge& sge) override {
    ibv_qp* qp = Find(qpn);
    if (qp == nullptr) return absl::NotFoundError("PostRecv: unknown QP");
    ibv_sge s{sge.addr, sge.length, sge.lkey};
    ibv_recv_wr wr{};
    wr.wr_id = wr_id;
    wr.sg_list = &s;
    wr.num_sge = 1;
    ibv_recv_wr* bad = nullptr;
    if (int rc = ibv_post_recv(qp, &wr, &bad); rc != 0) {
      return absl::ErrnoToStatus(rc, "ibv_post_recv");
    }
    return absl::OkStatus();
  }

  absl::Status PostSend(uint32_t qpn, absl::Span<const SendWr> wrs) override {
    ibv_qp* qp = Find(qpn);
    if (qp == nullptr) return absl::NotFoundError("PostSend: unknown QP");
    if (wrs.empty()) return absl::OkStatus();
    std::vector<ibv_sge> sges(wrs.size());
    std::vector<ibv_send_wr> list(wrs.size());
    for (size_t i = 0; i < wrs.size(); ++i) {
      const SendWr& w = wrs[i];
      sges[i] = ibv_sge{w.sge.addr, w.sge.length, w.sge.lkey};
      ibv_send_wr& o = list[i];
      o = ibv_send_wr{};
      o.wr_id = w.wr_id;
      o.sg_list = &sges[i];
      o.num_sge = 1;
      o.send_flags = w.signaled ? IBV_SEND_SIGNALED : 0;
      if (w.opcode == WrOpcode::kRdmaWrite) {
        o.opcode = IBV_WR_RDMA_WRITE;
        o.wr.rdma.remote_addr = w.remote_addr;
        o.wr.rdma.rkey = w.rkey;
      } else {
        o.opcode = IBV_WR_SEND;
      }
      o.next = i + 1 < wrs.size() ? &list[i + 1] : nullptr;
    }
    ibv_send_wr* bad = nullptr;
    if (int rc = ibv_post_send(qp, list.data(), &bad); rc != 0) {
      return absl::ErrnoToStatus(rc, "ibv_post_send");
    }
    return absl::OkStatus();
  }

 private:
  ibv_qp* Find(uint32_t qpn) {
    auto it = qps_.find(qpn);
    return it == qps_.end() ? nullptr : it->second;
  }

  absl::Status Modify(uint32_t qpn, ibv_qp_attr& a, int mask, const char* to) {
    ibv_qp* qp = Find(qpn);
    if (qp == nullptr) return absl::NotFoundError("ibv_modify_qp: unknown QP");
    if (int rc = ibv_modify_qp(qp, &a, mask); rc != 0) {
      return absl::ErrnoToStatus(rc, absl::StrCat("ibv_modify_qp(-> ", to, ")"));
    }
    return absl::OkStatus();
  }

  // Automatic choice: IB without an explicit index routes by LID (no GRH); RoCE needs a GID:
  // prefer RoCE v2 with an IPv4-mapped address (::ffff:a.b.c.d), then any RoCE v2, then any
  // non-zero GID.
  absl::Status PickGid(const ibv_port_attr& pa, int gid_index) {
    if (gid_index >= 0) {
      ibv_gid g{};
      if (gid_index >= pa.gid_tbl_len || ibv_query_gid(ctx_, port_.port, gid_index, &g) != 0) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "rdma_gid_index %d is not valid on %s port %d (table has %d entries; see show_gids)",
            gid_index, port_.device, port_.port, pa.gid_tbl_len));
      }
      port_.gid_index = gid_index;
      std::memcpy(port_.gid.raw, g.raw, 16);
      if (port_.gid.IsZero()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("GID index %d on %s is empty", gid_index, port_.device));
      }
      return absl::OkStatus();
    }
    if (port_.link_layer == LinkLayer::kInfiniBand) return absl::OkStatus();
    int best = -1, best_rank = -1;
    for (int i = 0; i < pa.gid_tbl_len; ++i) {
      ibv_gid_entry e{};
      if (ibv_query_gid_ex(ctx_, port_.port, i, &e, 0) != 0) continue;
      Gid g;
      std::memcpy(g.raw, e.gid.raw, 16);
      if (g.IsZero()) continue;
      bool v4 = std::all_of(g.raw, g.raw + 10, [](uint8_t b) { return b == 0; }) &&
                g.raw[10] == 0xff && g.raw[11] == 0xff;
      int rank = e.gid_type == IBV_GID_TYPE_ROCE_V2 ? (v4 ? 3 : 2) : 1;
      if (rank > best_rank) {
        best_rank = rank;
        best = i;
        port_.gid = g;
      }
    }
    if (best < 0) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "RoCE port %s/%d has no usable GID: give the netdev an IP address, or set "
          "Options::rdma_gid_index (see show_gids)",
          port_.device, port_.port));
    }
    port_.gid_index = best;
    return absl::OkStatus();
  }

  PortInfo port_;
  ibv_context* ctx_ = nullptr;
  ibv_pd* pd_ = nullptr;
  ibv_comp_channel* channel_ = nullptr;
  ibv_cq* cq_ = nullptr;
  unsigned unacked_ = 0;
  uint64_t next_handle_ = 0;
  std::unordered_map<uint32_t, ibv_qp*> qps_;
  std::unordered_map<uint64_t, ibv_mr*> mrs_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<VerbsOps>> OpenIbvDevice(const std::string& device, uint8_t port,
                                                        int gid_index) {
  auto v = std::make_unique<IbvVerbs>();
  absl::Status s = v->Open(device, port, gid_index);
  if (!s.ok()) return s;
  return std::unique_ptr<VerbsOps>(std::move(v));
}
#else
absl::StatusOr<std::unique_ptr<VerbsOps>> OpenIbvDevice(const std::string&, uint8_t, int) {
  return absl::FailedPreconditionError(
      "rdma: this libdsm was built without RDMA support (DSM_WITH_RDMA=OFF); use "
      "TransportKind::kTcp, or rebuild dsm with libibverbs (rdma-core, Debian: "
      "libibverbs-dev) installed");
}
#endif

}  // namespace dsm::rdma
