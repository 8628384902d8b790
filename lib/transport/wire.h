// The wire format: a fixed 48-byte little-endian header, then `payload_len` bytes.
//
//   offset size field
//   0      4    magic 0x314d5344 ("DSM1")
//   4      2    version (kWireVersion)
//   6      1    type (MsgType)
//   7      1    flags (0; reserved)
//   8      4    src node id
//   12     4    payload_len
//   16     8    region
//   24     8    page
//   32     8    req_id
//   40     8    arg
//
// Decoding never trusts a field: wrong magic or version, reserved flags, or any rule of the
// message table (protocol/validation.h: unknown type, a payload over kMaxPayload or of the
// wrong size for its type, fields that must be zero, arg layouts, src >= cluster size) is an
// error; so is a src that does not match the connection (the transport's check). A transport
// that sees one closes that connection and logs it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "protocol/message.h"

namespace dsm {

inline constexpr uint32_t kWireMagic = 0x314d5344;
inline constexpr uint16_t kWireVersion = 1;
inline constexpr size_t kWireHeaderSize = 48;

// Appends the encoded message to `out`. Does not validate (see ValidateMessage).
void EncodeMessage(const Message& m, std::vector<uint8_t>& out);

// Writes only the 48-byte header of `m` (payload_len = m.payload.size()) to `out`, for
// transports that send the payload from the Message's own buffer (scatter-gather).
void EncodeHeader(const Message& m, uint8_t* out);

// Header-only parse: returns the total frame length (header + payload) once `data` holds at
// least a header, 0 while `data` is shorter than a header (need more bytes), or an error if
// the header is invalid: bad magic/version/flags, or a header field breaking a rule of the
// message table (FindViolation). `cluster_size` must be in 1..kMaxNodes. The src/connection
// match is the transport's check (the header does not know the connection).
absl::StatusOr<size_t> PeekFrameLength(absl::Span<const uint8_t> data, size_t cluster_size);

// Decodes exactly one frame (data.size() must equal the frame length). Every check of
// PeekFrameLength plus the payload content checks (a name holds no NUL byte).
// m.dst is left 0: the receiving transport fills it.
absl::StatusOr<Message> DecodeMessage(absl::Span<const uint8_t> frame, size_t cluster_size);

// The checks DecodeMessage would apply to `m` once encoded (CheckMessage of the table);
// transports run it in Send() so a local bug is reported locally instead of making the
// receiver close the connection.
absl::Status ValidateMessage(const Message& m, size_t cluster_size);

}  // namespace dsm
