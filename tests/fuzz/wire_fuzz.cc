// libFuzzer target: the frame decoder (transport/wire.h). Input: byte 0 picks the cluster
// size (1..kMaxNodes), the rest is a byte stream cut into frames as a transport does.
// Checks: no crash or sanitizer report; PeekFrameLength and DecodeMessage agree; a decoded
// frame passes ValidateMessage and re-encodes to the same bytes.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "transport/wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t cluster = 1 + data[0] % dsm::kMaxNodes;
  absl::Span<const uint8_t> in(data + 1, size - 1);
  while (!in.empty()) {
    auto len = dsm::PeekFrameLength(in, cluster);
    if (!len.ok() || *len == 0 || *len > in.size()) break;
    if (*len < dsm::kWireHeaderSize) std::abort();
    const absl::Span<const uint8_t> frame = in.subspan(0, *len);
    auto m = dsm::DecodeMessage(frame, cluster);
    if (m.ok()) {
      if (!dsm::ValidateMessage(*m, cluster).ok()) std::abort();
      std::vector<uint8_t> again;
      dsm::EncodeMessage(*m, again);
      if (again.size() != frame.size() || std::memcmp(again.data(), frame.data(), again.size()))
        std::abort();
    }
    in.remove_prefix(*len);
  }
  return 0;
}
