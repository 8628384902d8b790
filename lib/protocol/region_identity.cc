#include "protocol/region_identity.h"

#include "absl/strings/str_cat.h"

namespace dsm {
namespace {

constexpr uint64_t kPolicyFixed = 1;
constexpr uint64_t kPolicyInterleaved = 2;

absl::Status Differs(absl::string_view name, absl::string_view field, absl::string_view mine,
                     absl::string_view theirs, NodeId other) {
  return absl::InvalidArgumentError(absl::StrCat("region '", name, "': ", field,
                                                 " differs: this node ", mine, ", node ", other,
                                                 " ", theirs));
}

}  // namespace

RegionIdentity IdentityOf(const RegionOptions& options, uint64_t size) {
  RegionIdentity id;
  id.size = size;
  id.home = options.home;
  id.policy = options.home_policy;
  id.backing = options.file_path.empty() ? Backing::kAnonymous : Backing::kFile;
  return id;
}

uint64_t PackIdentityWord(const RegionIdentity& id) {
  const uint64_t policy =
      id.policy == HomePolicy::kInterleaved ? kPolicyInterleaved : kPolicyFixed;
  return uint64_t{id.home & 0xff} | (policy << 8) |
         (static_cast<uint64_t>(id.backing) << 16);
}

std::optional<RegionIdentity> UnpackIdentityWord(uint64_t word, uint64_t size,
                                                 size_t cluster_size) {
  const uint64_t home = word & 0xff;
  const uint64_t policy = (word >> 8) & 0xff;
  const uint64_t backing = (word >> 16) & 0xff;
  if ((word >> 24) != 0 || home >= cluster_size) return std::nullopt;
  if (policy != kPolicyFixed && policy != kPolicyInterleaved) return std::nullopt;
  if (backing != static_cast<uint64_t>(Backing::kAnonymous) &&
      backing != static_cast<uint64_t>(Backing::kFile)) {
    return std::nullopt;
  }
  RegionIdentity id;
  id.size = size;
  id.home = static_cast<NodeId>(home);
  id.policy = policy == kPolicyInterleaved ? HomePolicy::kInterleaved : HomePolicy::kFixed;
  id.backing = static_cast<Backing>(backing);
  return id;
}

std::vector<uint8_t> EncodeRegionSize(uint64_t size) {
  std::vector<uint8_t> out(sizeof(uint64_t));
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>(size >> (8 * i));
  return out;
}

uint64_t DecodeRegionSize(absl::Span<const uint8_t> payload) {
  if (payload.size() != sizeof(uint64_t)) return 0;
  uint64_t size = 0;
  for (size_t i = 0; i < payload.size(); ++i) size |= uint64_t{payload[i]} << (8 * i);
  return size;
}

absl::Status CompareIdentity(absl::string_view region_name, const RegionIdentity& mine,
                             const RegionIdentity& theirs, NodeId other) {
  if (mine.size != theirs.size) {
    return Differs(region_name, "size", absl::StrCat(mine.size, " bytes"),
                   absl::StrCat(theirs.size, " bytes"), other);
  }
  if (mine.policy != theirs.policy) {
    return Differs(region_name, "home_policy", HomePolicyName(mine.policy),
                   HomePolicyName(theirs.policy), other);
  }
  // Under kInterleaved the home of every page follows from the cluster size alone.
  if (mine.policy == HomePolicy::kFixed && mine.home != theirs.home) {
    return Differs(region_name, "home", absl::StrCat("node ", mine.home),
                   absl::StrCat("node ", theirs.home), other);
  }
  if (mine.backing != theirs.backing) {
    return Differs(region_name, "backing", BackingName(mine.backing),
                   BackingName(theirs.backing), other);
  }
  return absl::OkStatus();
}

const char* HomePolicyName(HomePolicy p) {
  switch (p) {
    case HomePolicy::kFixed: return "kFixed";
    case HomePolicy::kInterleaved: return "kInterleaved";
  }
  return "unknown";
}

const char* BackingName(Backing b) {
  switch (b) {
    case Backing::kAnonymous: return "anonymous";
    case Backing::kFile: return "file";
  }
  return "unknown";
}

}  // namespace dsm
