#include "transport/admission/limits.h"

#include <arpa/inet.h>

namespace dsm::admission {

size_t PerSourceSlots(const std::vector<uint32_t>& peers_ipv4, NodeId self, uint32_t source) {
  size_t n = kPerSourceSlack;
  for (size_t i = self + 1; i < peers_ipv4.size(); ++i) n += peers_ipv4[i] == source;
  return n;
}

bool RateLimitedLog::Note(uint32_t source, absl::Time now, uint64_t* count) {
  auto it = entries_.find(source);
  if (it == entries_.end()) {
    if (entries_.size() >= kMaxSources) {
      absl::erase_if(entries_, [&](const auto& e) {
        return now - e.second.last_line >= interval_;
      });
    }
    if (entries_.size() >= kMaxSources) source = 0;
    it = entries_.try_emplace(source).first;
  }
  Entry& e = it->second;
  ++e.unlogged;
  if (now - e.last_line < interval_) return false;
  *count = e.unlogged;
  e.unlogged = 0;
  e.last_line = now;
  return true;
}

std::string Ipv4String(uint32_t ipv4) {
  in_addr a{};
  a.s_addr = htonl(ipv4);
  char buf[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &a, buf, sizeof(buf));
  return buf;
}

}  // namespace dsm::admission
