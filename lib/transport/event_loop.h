// EventLoop: one io_uring ring driven by one thread (a node's engine thread).
//
// Everything a node waits for is an operation on this ring: socket receives and sends, a poll
// on the userfaultfd, the eventfd that Post() signals. One thread waiting on all of them means
// no hand-off between a "fault thread" and a "network thread" on the fault path (a cross-vCPU
// wake-up costs ~20 us one way on the VMs we measured, more than a whole fault).
//
// Poll() first busy-polls the completion queue for up to `spin` (bounded, so an idle node uses
// no CPU), then sleeps in io_uring_enter until a completion or the timeout. How long to spin is
// the caller's decision: the engine asks its SpinPolicy (transport/spin_policy.h) each time.
//
// The ring is set up with IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG when the kernel
// accepts them (5.19+; without them it falls back to no flags). Socket and poll completions are
// finished by task work on the thread that *submitted* the operation; with COOP_TASKRUN the
// kernel does not interrupt that thread (no IPI) but flags IORING_SQ_TASKRUN, and the spin
// enters the kernel only then. Measured with bench/dsm_bench (lo, 2-vCPU VM, A/B medians): the
// remote read fault went from ~100 to ~50 us and the 1-sharer write upgrade from ~145 to ~80 us.
// SINGLE_ISSUER | DEFER_TASKRUN (with or without TASKRUN_FLAG) measured no better, and would
// tie the ring to one thread for its life. The work still runs on the submitter, so every
// submission must come from the loop thread: Create() only prepares entries, and the first
// Poll() submits them.
//
// Timers (RunAfter) are kept in user space: Poll() never sleeps past the earliest one, so a
// timer costs no ring operation and cancelling one is immediate (no CQE can outlive it).
//
// Thread safety: Post() and Wakeup() from any thread; everything else on the loop thread only.
// Before the loop thread's first Poll(), the creating thread may Prepare() entries (they wait in
// the submission queue; the loop thread submits them).
#pragma once

#include <liburing.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace dsm {

class EventLoop {
 public:
  // The completion of one submitted operation. The owner keeps it alive until OnComplete ran
  // (for multishot operations: until a CQE without IORING_CQE_F_MORE).
  class Op {
   public:
    virtual void OnComplete(int res, uint32_t cqe_flags) = 0;

   protected:
    ~Op() = default;
  };

  static absl::StatusOr<std::unique_ptr<EventLoop>> Create(unsigned queue_depth = 256);
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // A free submission entry whose completion goes to `op`. Never null: when the submission
  // queue is full it is submitted first. Entries are submitted by the next Poll() or Submit().
  io_uring_sqe* Prepare(Op* op);
  void Submit();

  // Handles completions and posted tasks: spins up to `spin`, then waits up to `timeout`.
  // Returns the number of completions and tasks handled.
  int Poll(absl::Duration spin, absl::Duration timeout);

  // Runs `fn` on the loop thread during a later Poll(). Any thread.
  void Post(absl::AnyInvocable<void()> fn);
  // Makes a sleeping Poll() return. Any thread.
  void Wakeup();

  // Runs `fn` on the loop thread in the first Poll() at or after now + `delay`. Loop thread.
  using TimerId = uint64_t;
  TimerId RunAfter(absl::Duration delay, absl::AnyInvocable<void()> fn);
  // Cancels a timer that has not run yet (no-op for an unknown or fired id); its function is
  // destroyed and never runs. Loop thread.
  void CancelTimer(TimerId id);

  io_uring* ring() { return &ring_; }

 private:
  class WakeOp;
  explicit EventLoop() = default;
  absl::Status Init(unsigned queue_depth);
  void ArmWakeRead();
  int RunPosted();
  int Dispatch();
  int RunTimers(absl::Time now);

  io_uring ring_{};
  bool ring_ok_ = false;
  // Set up with IORING_SETUP_TASKRUN_FLAG: pending completion work shows in the SQ flags.
  bool taskrun_flag_ = false;
  int wake_fd_ = -1;
  uint64_t wake_buf_ = 0;
  std::unique_ptr<WakeOp> wake_op_;
  std::atomic<bool> wake_pending_{false};
  absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> posted_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> has_posted_{false};
  // Timers, loop thread only: ordered by (deadline, id); `timer_deadline_` finds one by id.
  std::map<std::pair<absl::Time, TimerId>, absl::AnyInvocable<void()>> timers_;
  absl::flat_hash_map<TimerId, absl::Time> timer_deadline_;
  TimerId next_timer_id_ = 1;
};

}  // namespace dsm
