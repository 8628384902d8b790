#include "transport/wire.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

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
  uint64_t arg;
};

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
    default:
      return Bad(absl::StrFormat("unknown message type %u", f.type));
  }
  if (!ok) {
    return Bad(absl::StrFormat("payload_len %u illegal for %s", len,
                               MsgTypeName(static_cast<MsgType>(f.type))));
  }
  return absl::OkStatus();
}

absl::Status CheckHeader(const uint8_t* h, size_t cluster_size, Fields* out) {
  const uint32_t magic = Get32(h + kOffMagic);
  if (magic != kWireMagic) return Bad(absl::StrFormat("bad magic 0x%08x", magic));
  const uint16_t version = Get16(h + kOffVersion);
  if (version != kWireVersion) {
    return Bad(absl::StrFormat("version %u, expected %u", version, kWireVersion));
  }
  Fields f{h[kOffType], h[kOffFlags], Get32(h + kOffSrc), Get32(h + kOffLen), Get64(h + kOffArg)};
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
  if (static_cast<MsgType>(f.type) == MsgType::kRegionOpen &&
      std::memchr(payload, 0, f.payload_len) != nullptr) {
    return Bad("region name contains a NUL byte");
  }
  Message m;
  m.type = static_cast<MsgType>(f.type);
  m.src = f.src;
  m.region = Get64(h + kOffRegion);
  m.page = Get64(h + kOffPage);
  m.req_id = Get64(h + kOffReqId);
  m.arg = f.arg;
  m.payload.assign(payload, payload + f.payload_len);
  return m;
}

absl::Status ValidateMessage(const Message& m, size_t cluster_size) {
  if (m.payload.size() > kMaxPayload) {
    return Bad(absl::StrFormat("payload_len %u > max %u", m.payload.size(), kMaxPayload));
  }
  Fields f{static_cast<uint8_t>(m.type), 0, m.src, m.payload.size(), m.arg};
  absl::Status s = CheckFields(f, cluster_size);
  if (!s.ok()) return s;
  if (m.type == MsgType::kRegionOpen &&
      std::memchr(m.payload.data(), 0, m.payload.size()) != nullptr) {
    return Bad("region name contains a NUL byte");
  }
  return absl::OkStatus();
}

}  // namespace dsm
