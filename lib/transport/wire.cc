#include "transport/wire.h"

#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "common/payload_pool.h"

namespace dsm {
namespace {

// Explicit little-endian stores and loads: the layout never depends on the host's struct
// packing or byte order.
void Put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
void Put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void Put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t Get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t Get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Header offsets (see wire.h).
constexpr size_t kOffMagic = 0, kOffVersion = 4, kOffType = 6, kOffFlags = 7, kOffSrc = 8,
                 kOffLen = 12, kOffRegion = 16, kOffPage = 24, kOffReqId = 32, kOffArg = 40;

// The fields every check needs; all of them are in the header.
struct Fields {
  uint8_t type;
  uint8_t flags;
  uint32_t src;
  uint64_t payload_len;
  uint64_t region;
  uint64_t page;
  uint64_t arg;
};

// The lock and barrier rules of message.h (field packing owned by lock/protocol.h); checked
// here too so a malformed lock message never reaches the lock layer.
absl::Status CheckLockFields(const Fields& f, size_t cluster_size);

absl::Status Bad(const std::string& what) { return absl::InvalidArgumentError("wire: " + what); }

// A whole run of pages: 1..kMaxRunPages pages.
bool IsPageRun(uint64_t len) {
  return len >= kPageSize && len % kPageSize == 0 && len / kPageSize <= kMaxRunPages;
}

// The legal payload sizes of each type. A new MsgType must be added here, or it is rejected
// as unknown (types the enum does not declare are never accepted).
absl::Status CheckFields(const Fields& f, size_t cluster_size) {
  if (cluster_size == 0 || cluster_size > kMaxNodes) {
    return Bad(absl::StrFormat("cluster size %u out of range 1..%u", cluster_size, kMaxNodes));
  }
  if (f.flags != 0) return Bad(absl::StrFormat("flags 0x%02x (reserved, must be 0)", f.flags));
  if (f.src >= cluster_size) {
    return Bad(absl::StrFormat("src %u >= cluster size %u", f.src, cluster_size));
  }
  if (f.payload_len > kMaxPayload) {
    return Bad(absl::StrFormat("payload_len %u > max %u", f.payload_len, kMaxPayload));
  }
  const uint64_t len = f.payload_len;
  bool ok = false;
  switch (static_cast<MsgType>(f.type)) {
    case MsgType::kHello:
    case MsgType::kRegionOpenReply:
    case MsgType::kGetS:
    case MsgType::kGetM:
    case MsgType::kSyncReq:
    case MsgType::kNack:
    case MsgType::kSyncAck:
    case MsgType::kInv:
    case MsgType::kInvAck:
      ok = len == 0;
      break;
    case MsgType::kRegionOpen:
      ok = len >= 1 && len <= 255;
      break;
    case MsgType::kGetSRun:
      if (f.arg == 0 || f.arg > kMaxRunPages) {
        return Bad(absl::StrFormat("GetSRun of %u pages (1..%u)", f.arg, kMaxRunPages));
      }
      ok = len == 0;
      break;
    case MsgType::kDataRun:
      if (f.arg == 0 || f.arg > kMaxRunPages) {
        return Bad(absl::StrFormat("DataRun of %u pages (1..%u)", f.arg, kMaxRunPages));
      }
      // Fewer pages than asked for is legal (a prefix was granted), more is not.
      ok = len % kPageSize == 0 && len / kPageSize <= f.arg;
      break;
    case MsgType::kData:
      if (f.arg != static_cast<uint64_t>(Grant::kShared) &&
          f.arg != static_cast<uint64_t>(Grant::kModified)) {
        return Bad(absl::StrFormat("Data with grant %u", f.arg));
      }
      ok = IsPageRun(len);
      break;
    case MsgType::kGrant:
      if (f.arg != static_cast<uint64_t>(Grant::kShared) &&
          f.arg != static_cast<uint64_t>(Grant::kModified)) {
        return Bad(absl::StrFormat("Grant with grant %u", f.arg));
      }
      ok = len == 0;
      break;
    case MsgType::kPut:
      switch (static_cast<PutKind>(f.arg)) {
        case PutKind::kDropClean: ok = len == 0; break;
        case PutKind::kWritebackDrop:
        case PutKind::kWritebackKeep: ok = IsPageRun(len); break;
        default: return Bad(absl::StrFormat("Put with unknown kind %u", f.arg));
      }
      break;
    case MsgType::kRecall:
      if (f.arg != static_cast<uint64_t>(RecallKind::kDowngrade) &&
          f.arg != static_cast<uint64_t>(RecallKind::kInvalidate)) {
        return Bad(absl::StrFormat("Recall with unknown kind %u", f.arg));
      }
      ok = len == 0;
      break;
    case MsgType::kRecallAck:
      ok = len == 0 || IsPageRun(len);
      break;
    case MsgType::kLockAcquire:
    case MsgType::kLockReply:
    case MsgType::kLockRelease:
    case MsgType::kLockCancel:
    case MsgType::kBarrierEnter:
    case MsgType::kBarrierReply:
    case MsgType::kBarrierCancel:
      return CheckLockFields(f, cluster_size);
    default:
      return Bad(absl::StrFormat("unknown message type %u", f.type));
  }
  if (!ok) {
    return Bad(absl::StrFormat("payload_len %u illegal for %s", len,
                               MsgTypeName(static_cast<MsgType>(f.type))));
  }
  return absl::OkStatus();
}

absl::Status CheckLockFields(const Fields& f, size_t cluster_size) {
  const MsgType t = static_cast<MsgType>(f.type);
  const char* name = MsgTypeName(t);
  switch (t) {
    case MsgType::kLockAcquire: {
      if (f.payload_len != 0) return Bad(absl::StrFormat("%s with a payload", name));
      const uint64_t len = f.arg & ((uint64_t{1} << 48) - 1);
      const uint64_t mode = (f.arg >> 48) & 0xf;
      const uint64_t flags = (f.arg >> 52) & 0xf;
      if (len == 0) return Bad("LockAcquire with len 0");
      if (mode != 1 && mode != 2) return Bad(absl::StrFormat("LockAcquire with mode %u", mode));
      if ((flags & ~uint64_t{1}) != 0 || (f.arg >> 56) != 0) {
        return Bad(absl::StrFormat("LockAcquire with reserved arg bits 0x%x", f.arg));
      }
      if (len > UINT64_MAX - f.page) return Bad("LockAcquire range overflows 2^64");
      return absl::OkStatus();
    }
    case MsgType::kLockReply: {
      if (f.payload_len != 0) return Bad(absl::StrFormat("%s with a payload", name));
      const uint64_t code = f.arg & 0xff;
      if (code < 1 || code > 9) return Bad(absl::StrFormat("LockReply with code %u", code));
      if ((f.arg >> 9) != 0) return Bad(absl::StrFormat("LockReply with arg 0x%x", f.arg));
      if (f.page != 0) return Bad("LockReply with page != 0");
      return absl::OkStatus();
    }
    case MsgType::kLockRelease:
    case MsgType::kLockCancel:
      if (f.payload_len != 0) return Bad(absl::StrFormat("%s with a payload", name));
      if (f.page != 0 || f.arg != 0) return Bad(absl::StrFormat("%s with page/arg != 0", name));
      return absl::OkStatus();
    case MsgType::kBarrierEnter:
    case MsgType::kBarrierCancel: {
      if (f.payload_len < 1 || f.payload_len > 255) {
        return Bad(absl::StrFormat("payload_len %u illegal for %s", f.payload_len, name));
      }
      const uint64_t members = f.arg;
      const uint64_t all =
          cluster_size >= 64 ? ~uint64_t{0} : (uint64_t{1} << cluster_size) - 1;
      if (members == 0 || (members & ~all) != 0 || ((members >> f.src) & 1) == 0) {
        return Bad(absl::StrFormat("%s with member mask 0x%x", name, members));
      }
      if (f.region != 0) return Bad(absl::StrFormat("%s with region != 0", name));
      return absl::OkStatus();
    }
    case MsgType::kBarrierReply: {
      if (f.payload_len != 0) return Bad(absl::StrFormat("%s with a payload", name));
      const uint64_t code = f.arg & 0xff;
      const uint64_t down = (f.arg >> 8) & 0xff;
      if (code < 1 || code > 5) return Bad(absl::StrFormat("BarrierReply with code %u", code));
      if ((f.arg >> 16) != 0 || down >= cluster_size) {
        return Bad(absl::StrFormat("BarrierReply with arg 0x%x", f.arg));
      }
      return absl::OkStatus();
    }
    default:
      return Bad(absl::StrFormat("unknown message type %u", f.type));
  }
}

// Payloads that are names: no NUL byte.
bool PayloadIsName(MsgType t) {
  return t == MsgType::kRegionOpen || t == MsgType::kBarrierEnter || t == MsgType::kBarrierCancel;
}

absl::Status CheckHeader(const uint8_t* h, size_t cluster_size, Fields* out) {
  const uint32_t magic = Get32(h + kOffMagic);
  if (magic != kWireMagic) return Bad(absl::StrFormat("bad magic 0x%08x", magic));
  const uint16_t version = Get16(h + kOffVersion);
  if (version != kWireVersion) {
    return Bad(absl::StrFormat("version %u, expected %u", version, kWireVersion));
  }
  Fields f{h[kOffType],          h[kOffFlags],          Get32(h + kOffSrc), Get32(h + kOffLen),
           Get64(h + kOffRegion), Get64(h + kOffPage), Get64(h + kOffArg)};
  absl::Status s = CheckFields(f, cluster_size);
  if (!s.ok()) return s;
  *out = f;
  return absl::OkStatus();
}

}  // namespace

void EncodeHeader(const Message& m, uint8_t* h) {
  Put32(h + kOffMagic, kWireMagic);
  Put16(h + kOffVersion, kWireVersion);
  h[kOffType] = static_cast<uint8_t>(m.type);
  h[kOffFlags] = 0;
  Put32(h + kOffSrc, m.src);
  Put32(h + kOffLen, static_cast<uint32_t>(m.payload.size()));
  Put64(h + kOffRegion, m.region);
  Put64(h + kOffPage, m.page);
  Put64(h + kOffReqId, m.req_id);
  Put64(h + kOffArg, m.arg);
}

void EncodeMessage(const Message& m, std::vector<uint8_t>& out) {
  const size_t at = out.size();
  out.resize(at + kWireHeaderSize + m.payload.size());
  EncodeHeader(m, out.data() + at);
  if (!m.payload.empty()) {
    std::memcpy(out.data() + at + kWireHeaderSize, m.payload.data(), m.payload.size());
  }
}

absl::StatusOr<size_t> PeekFrameLength(absl::Span<const uint8_t> data, size_t cluster_size) {
  if (data.size() < kWireHeaderSize) return size_t{0};
  Fields f;
  absl::Status s = CheckHeader(data.data(), cluster_size, &f);
  if (!s.ok()) return s;
  return kWireHeaderSize + static_cast<size_t>(f.payload_len);
}

absl::StatusOr<Message> DecodeMessage(absl::Span<const uint8_t> frame, size_t cluster_size) {
  if (frame.size() < kWireHeaderSize) {
    return Bad(absl::StrFormat("truncated header: %u of %u bytes", frame.size(),
                               kWireHeaderSize));
  }
  const uint8_t* h = frame.data();
  Fields f;
  absl::Status s = CheckHeader(h, cluster_size, &f);
  if (!s.ok()) return s;
  if (frame.size() != kWireHeaderSize + f.payload_len) {
    return Bad(absl::StrFormat("frame is %u bytes, header says %u", frame.size(),
                               kWireHeaderSize + f.payload_len));
  }
  const uint8_t* payload = h + kWireHeaderSize;
  if (PayloadIsName(static_cast<MsgType>(f.type)) &&
      std::memchr(payload, 0, f.payload_len) != nullptr) {
    return Bad("name payload contains a NUL byte");
  }
  Message m;
  m.type = static_cast<MsgType>(f.type);
  m.src = f.src;
  m.region = Get64(h + kOffRegion);
  m.page = Get64(h + kOffPage);
  m.req_id = Get64(h + kOffReqId);
  m.arg = f.arg;
  // Large payloads (page runs) reuse a buffer of this thread: see common/payload_pool.h.
  if (f.payload_len >= kPayloadPoolMinCapacity) m.payload = TakePayloadBuffer(f.payload_len);
  m.payload.assign(payload, payload + f.payload_len);
  return m;
}

absl::Status ValidateMessage(const Message& m, size_t cluster_size) {
  if (m.payload.size() > kMaxPayload) {
    return Bad(absl::StrFormat("payload_len %u > max %u", m.payload.size(), kMaxPayload));
  }
  Fields f{static_cast<uint8_t>(m.type), 0, m.src, m.payload.size(), m.region, m.page, m.arg};
  absl::Status s = CheckFields(f, cluster_size);
  if (!s.ok()) return s;
  if (PayloadIsName(m.type) && std::memchr(m.payload.data(), 0, m.payload.size()) != nullptr) {
    return Bad("name payload contains a NUL byte");
  }
  return absl::OkStatus();
}

}  // namespace dsm
