#include "transport/rdma/framing.h"

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "transport/wire.h"

namespace dsm::rdma {
namespace {

void Put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
void Put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t Get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Get32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

}  // namespace

void EncodeRdmaHeader(const RdmaHeader& h, uint8_t* out) {
  Put32(out, kRdmaMagic);
  out[4] = static_cast<uint8_t>(h.kind);
  out[5] = 0;
  Put16(out + 6, h.credits);
  Put16(out + 8, h.slots);
  Put16(out + 10, h.kind == FrameKind::kStaged ? h.slot : 0);
  Put32(out + 12, h.kind == FrameKind::kStaged ? h.payload_len : 0);
}

absl::StatusOr<RdmaHeader> DecodeRdmaHeader(absl::Span<const uint8_t> buf) {
  if (buf.size() < kRdmaHeaderSize) {
    return absl::InvalidArgumentError(
        absl::StrFormat("rdma: %u-byte SEND is shorter than the RDMA header", buf.size()));
  }
  const uint8_t* p = buf.data();
  if (Get32(p) != kRdmaMagic) return absl::InvalidArgumentError("rdma: bad header magic");
  if (p[5] != 0) return absl::InvalidArgumentError("rdma: reserved header byte is not zero");
  RdmaHeader h;
  h.credits = Get16(p + 6);
  h.slots = Get16(p + 8);
  h.slot = Get16(p + 10);
  h.payload_len = Get32(p + 12);
  const size_t rest = buf.size() - kRdmaHeaderSize;
  switch (p[4]) {
    case static_cast<uint8_t>(FrameKind::kInline):
      h.kind = FrameKind::kInline;
      if (rest < kWireHeaderSize) {
        return absl::InvalidArgumentError("rdma: inline SEND shorter than a wire header");
      }
      break;
    case static_cast<uint8_t>(FrameKind::kStaged):
      h.kind = FrameKind::kStaged;
      if (rest != kWireHeaderSize) {
        return absl::InvalidArgumentError(
            absl::StrFormat("rdma: staged descriptor carries %u bytes, want %u", rest,
                            kWireHeaderSize));
      }
      if (h.payload_len == 0 || h.payload_len > kMaxPayload) {
        return absl::InvalidArgumentError(
            absl::StrFormat("rdma: staged payload length %u out of range", h.payload_len));
      }
      break;
    case static_cast<uint8_t>(FrameKind::kCredit):
      h.kind = FrameKind::kCredit;
      if (rest != 0) return absl::InvalidArgumentError("rdma: credit message with a body");
      break;
    default:
      return absl::InvalidArgumentError(absl::StrFormat("rdma: unknown frame kind %d", p[4]));
  }
  return h;
}

}  // namespace dsm::rdma
