// Small helpers shared by the coherence tests: a fixed home, a request to the home, a reply
// built from a request, a fixed clock.
#pragma once

#include <cstdint>

#include "absl/time/time.h"
#include "coherence/types.h"

namespace dsm::coherence::test {

inline const absl::Time kT0 = absl::UnixEpoch();

// Every page is homed at node h.
inline HomeFn HomeAt(NodeId h) {
  return [h](PageIndex) { return h; };
}

// A message of type t from `src` to node 0 (the home in the directory tests) for `page`.
inline Message Msg(MsgType t, NodeId src, PageIndex page, uint64_t arg = 0,
                   uint64_t req_id = 1) {
  Message m;
  m.type = t;
  m.src = src;
  m.dst = 0;
  m.page = page;
  m.arg = arg;
  m.req_id = req_id;
  return m;
}

// The home's answer of type t to request `req`, with `arg`; kData carries a page of 7s.
inline Message Reply(MsgType t, const Message& req, uint64_t arg) {
  Message m;
  m.type = t;
  m.src = req.dst;
  m.dst = req.src;
  m.page = req.page;
  m.req_id = req.req_id;
  m.arg = arg;
  if (t == MsgType::kData) m.payload.assign(kPageSize, 7);
  return m;
}

}  // namespace dsm::coherence::test
