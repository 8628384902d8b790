#include "transport/wire.h"

#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "common/payload_pool.h"
#include "protocol/validation.h"

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

absl::Status Bad(const std::string& what) { return absl::InvalidArgumentError("wire: " + what); }

// The framing checks (magic, version, reserved flags) and then every rule of the message
// table (protocol/validation.h) on the header's fields.
absl::Status CheckHeader(const uint8_t* h, size_t cluster_size, MessageFields* out) {
  const uint32_t magic = Get32(h + kOffMagic);
  if (magic != kWireMagic) return Bad(absl::StrFormat("bad magic 0x%08x", magic));
  const uint16_t version = Get16(h + kOffVersion);
  if (version != kWireVersion) {
    return Bad(absl::StrFormat("version %u, expected %u", version, kWireVersion));
  }
  const uint8_t flags = h[kOffFlags];
  if (flags != 0) return Bad(absl::StrFormat("flags 0x%02x (reserved, must be 0)", flags));
  MessageFields f{h[kOffType],          Get32(h + kOffSrc),  Get32(h + kOffLen),
                  Get64(h + kOffRegion), Get64(h + kOffPage), Get64(h + kOffReqId),
                  Get64(h + kOffArg)};
  *out = f;
  return ViolationStatus(FindViolation(f, cluster_size), f);
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
  MessageFields f;
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
  MessageFields f;
  absl::Status s = CheckHeader(h, cluster_size, &f);
  if (!s.ok()) return s;
  if (frame.size() != kWireHeaderSize + f.payload_len) {
    return Bad(absl::StrFormat("frame is %u bytes, header says %u", frame.size(),
                               kWireHeaderSize + f.payload_len));
  }
  const uint8_t* payload = h + kWireHeaderSize;
  if (Violation v = FindPayloadViolation(static_cast<MsgType>(f.type),
                                         absl::MakeConstSpan(payload, f.payload_len));
      v != Violation::kNone) {
    return ViolationStatus(v, f);
  }
  Message m;
  m.type = static_cast<MsgType>(f.type);
  m.src = f.src;
  m.region = Get64(h + kOffRegion);
  m.page = Get64(h + kOffPage);
  m.req_id = f.req_id;
  m.arg = f.arg;
  // Large payloads (page runs) reuse a buffer of this thread: see common/payload_pool.h.
  if (f.payload_len >= kPayloadPoolMinCapacity) m.payload = TakePayloadBuffer(f.payload_len);
  m.payload.assign(payload, payload + f.payload_len);
  return m;
}

absl::Status ValidateMessage(const Message& m, size_t cluster_size) {
  return CheckMessage(m, cluster_size);
}

}  // namespace dsm
