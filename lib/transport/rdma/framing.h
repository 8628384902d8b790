// Framing of RDMA SENDs. Every SEND starts with a 16-byte RDMA header, little-endian:
//
//   offset size field
//   0      4    magic 0x52445344 ("DSDR")
//   4      1    kind: 1 inline, 2 staged, 3 credit-only
//   5      1    reserved (0)
//   6      2    credits returned (receive buffers reposted)
//   8      2    staging slots returned
//   10     2    slot (staged only)
//   12     4    payload length (staged only)
//
// inline:      header + one whole wire.h frame (header and payload).
// staged:      header + the 48-byte wire.h header alone; the payload was RDMA-written into
//              staging slot `slot` before this SEND on the same RC QP (so it is visible when
//              the SEND completes). The receiver rebuilds the frame and decodes it with
//              DecodeMessage, so every message is validated by the shared wire decoder.
// credit-only: header alone.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace dsm::rdma {

inline constexpr uint32_t kRdmaMagic = 0x52445344;
inline constexpr size_t kRdmaHeaderSize = 16;

enum class FrameKind : uint8_t { kInline = 1, kStaged = 2, kCredit = 3 };

struct RdmaHeader {
  FrameKind kind = FrameKind::kInline;
  uint16_t credits = 0;
  uint16_t slots = 0;
  uint16_t slot = 0;
  uint32_t payload_len = 0;
};

void EncodeRdmaHeader(const RdmaHeader& h, uint8_t* out);
// Checks magic, kind and the size rules above; `buf` is the whole SEND as received.
absl::StatusOr<RdmaHeader> DecodeRdmaHeader(absl::Span<const uint8_t> buf);

}  // namespace dsm::rdma
