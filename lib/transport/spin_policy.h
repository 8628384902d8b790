// SpinPolicy: decides how long an event-loop thread busy-polls before it sleeps.
//
// Sleeping is cheap for the sleeper and expensive for whoever waits on it: waking a thread
// whose vCPU halted costs ~20 us one way on the 2-vCPU VMs we measured, more than a whole
// remote fault's busy-polled floor. Spinning is cheap only while an event is about to arrive
// and a vCPU is spare. So the loop spins only in a *window* opened by its own activity:
//
//   - awaiting: after this thread sent a request (the caller says which sends expect an
//     answer), until the next message arrives (usually the answer), for up to the cap. An
//     answer is certainly due, so the window does not shrink to the typical wait: a window of
//     3x the median reply wait ended before the slowest replies, whose senders then paid a
//     wake-up (and misses led to back-offs): read-fault p99s of 640-820 us against 120-160 us
//     with the cap, medians alike, in alternating runs;
//   - stream:   after an input (message or fault) when inputs have lately been arriving at
//     most cap apart (a home serving a stream of faults, a requester whose application
//     faults again right after each install), for a few times the recent gap.
//
// Invariants (each has a test in tests/transport/spin_policy_test.cc):
//   - SpinFor() is 0 when the cap is 0, and whenever more loop threads are live in this
//     process than vCPUs - 1 (a spinning loop would take the vCPU of the thread it waits for;
//     measured: in-process clusters got 10-100x slower faults).
//   - No spin outlasts cap after the last OnSend/OnInput: an idle loop sleeps at most `cap`
//     after its last activity, whatever the history.
//   - A window that ends without an input is a miss; kMissesToBackOff misses in a row stop all
//     spinning for a back-off period (1 ms, doubling up to 128 ms on repeated back-offs; a hit
//     resets it), so a loop whose spins never pay stops paying for them.
//
// Pure logic: callers pass the time. Thread safety: one thread (the loop thread); the live
// loop counter is a process-wide atomic (LoopThreadRegistration).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>

#include "absl/time/time.h"

namespace dsm {

class SpinPolicy {
 public:
  struct Config {
    // Upper bound of one window; 0 = never spin.
    absl::Duration cap = absl::ZeroDuration();
    // vCPUs this process may run on; <= 0 = ask sched_getaffinity.
    int vcpus = 0;
    // Loop threads live in this process; null = the process-wide LiveLoopThreads().
    const std::atomic<int>* live_loops = nullptr;
  };

  // A stream window is kWindowFactor x the median recent gap between inputs, at least
  // kMinWindow, at most cap. (An awaiting window is the cap itself.)
  static constexpr int kWindowFactor = 3;
  static constexpr absl::Duration kMinWindow = absl::Microseconds(20);
  static constexpr int kMissesToBackOff = 3;
  static constexpr absl::Duration kMinBackOff = absl::Milliseconds(1);
  static constexpr absl::Duration kMaxBackOff = absl::Milliseconds(128);
  // A window counts as a hit if its input was handled this soon after the window's end (the
  // input was seen during the spin but handled just after the deadline).
  static constexpr absl::Duration kHitSlack = absl::Microseconds(10);

  explicit SpinPolicy(const Config& config);

  // This thread sent a message that expects an answer (it will likely hear back soon).
  void OnSend(absl::Time now);
  // This thread received an input: a message (`message` = true) or another event worth
  // waiting for (a page fault).
  void OnInput(absl::Time now, bool message);
  // How long the next Poll() may spin, from `now`. Call before each Poll().
  absl::Duration SpinFor(absl::Time now);

  // Counters, for tests and stats.
  struct Counters {
    uint64_t windows = 0;   // windows opened
    uint64_t hits = 0;      // windows that ended with an input
    uint64_t misses = 0;    // windows that ran out
    uint64_t back_offs = 0;
  };
  const Counters& counters() const { return counters_; }
  bool spinning_allowed() const;

  // The process-wide number of live loop threads (see LoopThreadRegistration).
  static std::atomic<int>& LiveLoopThreads();
  // vCPUs this process may run on (sched_getaffinity), at least 1.
  static int UsableCpus();

 private:
  // The last few samples of one kind of wait; Median() of what is there.
  class Samples {
   public:
    void Add(absl::Duration d);
    bool empty() const { return n_ == 0; }
    absl::Duration Median() const;

   private:
    std::array<absl::Duration, 16> v_{};
    size_t n_ = 0;     // samples held, <= v_.size()
    size_t next_ = 0;  // slot for the next sample
  };

  // Closes the open window as a hit or a miss.
  void CloseWindow(bool hit, absl::Time now);

  const absl::Duration cap_;
  const int vcpus_;
  const std::atomic<int>* const live_loops_;

  bool awaiting_ = false;                      // sent, nothing received since
  absl::Time await_start_ = absl::InfinitePast();
  absl::Time last_input_ = absl::InfinitePast();
  Samples input_gaps_;                         // input -> next input

  bool window_open_ = false;                   // a spin was granted and has not ended
  absl::Time window_end_ = absl::InfinitePast();
  int misses_in_row_ = 0;
  absl::Duration next_back_off_ = kMinBackOff;
  absl::Time back_off_until_ = absl::InfinitePast();
  Counters counters_;
};

// Counts a loop thread in SpinPolicy::LiveLoopThreads() for its lifetime. Create one on each
// event-loop thread that may spin (or that competes with one for a vCPU).
class LoopThreadRegistration {
 public:
  LoopThreadRegistration() { SpinPolicy::LiveLoopThreads().fetch_add(1); }
  ~LoopThreadRegistration() { SpinPolicy::LiveLoopThreads().fetch_sub(1); }
  LoopThreadRegistration(const LoopThreadRegistration&) = delete;
  LoopThreadRegistration& operator=(const LoopThreadRegistration&) = delete;
};

}  // namespace dsm
