// The lock and barrier commands of node_worker's repl scenario (see node_worker.cc). Each
// command line gets one reply line: "ok ...", "fail <status>" when the lock layer refused (an
// outcome a test may expect), or "err ..." for bad arguments and broken checks.
//
//   lock <off> <len> <s|x> [timeout_ms]   blocking Lock; "ok <id> died=<0|1>" (kept held)
//   trylock <off> <len> <s|x>             TryLock; "ok <id> died=<0|1>" or "fail ABORTED: ..."
//   unlock <id>                           releases a lock taken by lock/trylock/asyncwait
//   lockasync <off> <len> <s|x>           LockAsync, infinite deadline; "ok <key>" at once
//   asyncstate <key>                      "ok pending", or the outcome as asyncwait says it
//   asyncwait <key> <timeout_ms>          waits for the callback: "ok <id> died=<0|1>" (then
//                                         held as if taken by lock) or "fail <status>"
//   lockincr <off> <len> <counter_off> <threads> <iters>
//                                         each thread iters x: exclusive lock, plain
//                                         (non-atomic) read-modify-write of the counter, unlock
//   lockseq <lock_off> <me> <n> <rounds> <data_off> <words> <timeout_ms>
//                                         acquire/release order: see LockSeq in the .cc
//   lockloop <off> <len> <a_off> <b_off> <stop_off> <max_ms> <lock_ms> <sync 0|1>
//                                         a lock-increment loop that a test may kill a node
//                                         in: see LockLoop in the .cc
//   cbarrier <name> <all|id,id,...> <timeout_ms>   Node::Barrier; "ok" or "fail <status>"
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dsm/node.h"
#include "dsm/region.h"

namespace dsm::testing {

class WorkerLocks {
 public:
  // `say` prints a line before the command's reply (lockloop's "started").
  WorkerLocks(Node* node, Region* region, std::function<void(const std::string&)> say);
  ~WorkerLocks();  // releases every lock still held (before the region is unmapped)

  // The reply to `c`, or "" when c[0] is not a lock command.
  std::string Run(const std::vector<std::string>& c);

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace dsm::testing
