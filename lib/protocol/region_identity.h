// RegionIdentity: what every node that maps a region must agree on besides its name, and how
// it travels in the region-open handshake (kRegionOpen / kRegionOpenReply, message.h).
//
// Two nodes that map one name with different sizes, homes, home policies or backings would
// each run their own directory and never see each other's writes: the handshake compares
// these fields and refuses any difference, naming the field and both values.
//
//   RegionIdentity mine = IdentityOf(options, rounded_size);
//   m.page = PackIdentityWord(mine);               // kRegionOpen
//   absl::Status s = CompareIdentity("x", mine, theirs, /*other=*/0);
//   // InvalidArgument: "region 'x': home_policy differs: this node kInterleaved, node 0 kFixed"
//
// Identity word (64 bits, little-endian on the wire like every header field):
//   bits  0..7   home node id (< cluster size; compared under kFixed only)
//   bits  8..15  home policy: 1 = kFixed, 2 = kInterleaved
//   bits 16..23  backing: 1 = anonymous, 2 = file
//   bits 24..63  zero
// Zero is never a valid word, so a frame of the earlier layout (page = 0) is rejected.
// Interleaving has no parameter besides the cluster size, which Hello already compares.
//
// Thread safety: pure functions of their arguments.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "dsm/options.h"

namespace dsm {

enum class Backing : uint8_t { kAnonymous = 1, kFile = 2 };

struct RegionIdentity {
  uint64_t size = 0;  // bytes, whole pages
  NodeId home = 0;    // RegionOptions::home; meaningful under kFixed
  HomePolicy policy = HomePolicy::kFixed;
  Backing backing = Backing::kAnonymous;
};

// The identity `options` give a region of `size` bytes (already rounded to pages).
RegionIdentity IdentityOf(const RegionOptions& options, uint64_t size);

uint64_t PackIdentityWord(const RegionIdentity& id);
// The identity of `word` with `size`, or nullopt when `word` breaks the layout above or names
// a home outside the cluster.
std::optional<RegionIdentity> UnpackIdentityWord(uint64_t word, uint64_t size,
                                                 size_t cluster_size);

// kRegionOpenReply's payload: the answerer's size as 8 little-endian bytes. Decode needs
// exactly 8 bytes (the validation table guarantees it) and returns 0 otherwise.
std::vector<uint8_t> EncodeRegionSize(uint64_t size);
uint64_t DecodeRegionSize(absl::Span<const uint8_t> payload);

// OK when `mine` and `theirs` agree; otherwise InvalidArgument naming the first field that
// differs (size, home_policy, home, backing) with this node's value and node `other`'s.
absl::Status CompareIdentity(absl::string_view region_name, const RegionIdentity& mine,
                             const RegionIdentity& theirs, NodeId other);

// "kFixed" / "kInterleaved"; "anonymous" / "file".
const char* HomePolicyName(HomePolicy p);
const char* BackingName(Backing b);

}  // namespace dsm
