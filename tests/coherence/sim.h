// A deterministic simulator of the MSI protocol: N nodes, each with a Cache and a Directory
// (answering for the pages homed there), a simulated memory per node whose mapped access
// (I/S/M) changes only through the CachePort, FIFO channels per ordered (src, dst) pair (the
// self channel too), per-node queues of userfaultfd events, and application "threads" that
// access pages the way the hardware would: directly when the mapping allows it, otherwise by
// raising a fault and blocking until a port call wakes them (Install, SetAccess(M), Wake,
// Fail), after which they retry and may fault again.
//
// Check() verifies, over the actual simulated mappings (not the protocol's beliefs):
//  - SWMR: at most one node maps a page writable, and then no other node maps it at all;
//  - data: every mapped copy holds the value of the last completed write, every completed
//    read returned it, and the home's storage holds it whenever the directory says the page
//    is not Modified;
//  - directory: every node that maps a page is recorded (sharer or owner; M => owner);
//  - cache: the Cache's state() equals the real mapping.
// The first violation is kept in error() (with the step number); the simulator keeps going.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "coherence/cache.h"
#include "coherence/directory.h"
#include "coherence/replacement.h"

namespace dsm::coherence::sim {

class Sim {
 public:
  enum class ThreadState { kBlocked, kRunnable, kDone, kFailed, kDead };
  struct Thread {
    NodeId node = 0;
    PageIndex page = 0;
    bool write = false;
    ThreadState state = ThreadState::kRunnable;
    uint64_t value = 0;  // written value, or value read
    int faults = 0;      // faults raised so far
  };

  // `readahead`: every Cache's Config::readahead_max_pages (0: off). With it on, Step() also
  // makes half of the new accesses sequential bursts (the page after the node's last access).
  Sim(int nodes, int pages, HomeFn home, uint64_t readahead = 0);
  ~Sim();
  Sim(const Sim&) = delete;
  Sim& operator=(const Sim&) = delete;

  // --- actions (each is one atomic step of the system) ---
  // Starts an application access and tries it at once. Returns the thread id.
  int Access(NodeId n, PageIndex p, bool write);
  // Retries a runnable (woken) thread: completes it or raises a fault again.
  void Run(int tid);
  // Runs every runnable thread once; returns how many ran.
  int RunAll();
  // Hands the oldest pending uffd event of node n to its Cache. False if none.
  bool DeliverFault(NodeId n);
  int DeliverAllFaults();
  // Delivers the head of channel src->dst. False if empty.
  bool Deliver(NodeId src, NodeId dst);
  bool Release(NodeId n, PageIndex p);
  // Gives node n a memory budget of `pages` remote pages, enforced by a coherence::Replacer
  // on its fault path (after every DeliverFault), with write sampling if `sample_writes`.
  // Check() then also verifies the replacer's accounting against the real mappings and that
  // each Enforce() did all it could.
  void SetBudget(NodeId n, uint64_t pages, bool sample_writes = true);
  Replacer* replacer(NodeId n);
  // Runs node n's Enforce() now (as the engine's periodic tick does).
  void Enforce(NodeId n);
  // Pages node n maps whose home is another node.
  uint64_t MappedRemote(NodeId n) const;
  // Cache::WriteBackAll of node n; 0 if it returned an error (see last_writeback_status()).
  size_t WriteBackAll(NodeId n);
  const absl::Status& last_writeback_status() const { return last_writeback_status_; }
  // n goes down: its channels and events vanish, survivors get OnPeerDown.
  void Kill(NodeId n);
  // One random action. `allow_new` permits starting new accesses, `maintenance` permits
  // Release/WriteBackAll.
  void Step(std::mt19937_64& rng, bool allow_new, bool maintenance);
  // Runs until nothing is left to do (threads first, then faults, then messages in the
  // order given by rng, or channel order when rng is null). False if it does not settle
  // within max_steps (livelock).
  bool Settle(std::mt19937_64* rng = nullptr, int max_steps = 100000);

  // Verifies the invariants listed above; records the first violation.
  bool Check();

  // --- inspection ---
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  const Thread& thread(int tid) const { return threads_[tid]; }
  int num_threads() const { return static_cast<int>(threads_.size()); }
  bool AllThreadsFinished() const;  // every thread of a live node is done or failed
  const std::deque<Message>& channel(NodeId src, NodeId dst) const;
  size_t InFlight() const;
  Cache& cache(NodeId n);
  Directory& directory(NodeId n);
  PageState mapped(NodeId n, PageIndex p) const;
  uint64_t value(NodeId n, PageIndex p) const;       // first word of n's copy
  uint64_t home_value(PageIndex p) const;            // first word of the home's storage
  uint64_t last_write(PageIndex p) const { return last_write_[p]; }
  bool alive(NodeId n) const { return alive_[n]; }
  uint64_t steps() const { return steps_; }
  // The simulated clock (each step advances it by 1 us); liveness tests move it on by hand.
  absl::Time now() const { return now_; }
  void AdvanceTime(absl::Duration d) { now_ += d; }
  // Counts of port calls, for tests that care how a result was reached.
  struct PortCalls {
    int install = 0, set_access = 0, read_page = 0, drop = 0, fail = 0, wake = 0;
    int protect = 0, protected_pages = 0, unprotect = 0, batches = 0, batched_sends = 0;
    int failed = 0;  // injected failures returned
  };
  const PortCalls& port_calls(NodeId n) const;

  // Fault injection: the next port call of kind `op` on `page` at node n returns an error and
  // changes nothing (as a failed ioctl or write). kSetAccessShared covers DowngradeRun.
  enum class PortOp {
    kInstall, kSetAccessShared, kSetAccessModified, kDrop, kStore, kProtect, kUnprotect
  };
  void FailNextPortCall(NodeId n, PortOp op, PageIndex page);

  // Records a violation (also used by the ports).
  void Violation(const std::string& what);

 private:
  class Port;
  friend class Port;
  void CheckEnforced(NodeId n);
  struct Node;

  void Enqueue(NodeId src, Message&& m);
  void WakeThreads(NodeId n, PageIndex p);
  bool TryAccess(int tid);

  int n_;
  int pages_;
  uint64_t readahead_ = 0;
  std::vector<PageIndex> last_access_;  // per node, for sequential bursts
  HomeFn home_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<bool> alive_;
  std::vector<std::deque<Message>> chans_;  // index src * n_ + dst
  std::vector<Thread> threads_;
  std::vector<uint64_t> last_write_;
  uint64_t next_value_ = 1;
  uint64_t steps_ = 0;
  absl::Time now_ = absl::UnixEpoch();
  std::string error_;
  absl::Status last_writeback_status_;
};

}  // namespace dsm::coherence::sim
