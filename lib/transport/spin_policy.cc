#include "transport/spin_policy.h"

#include <sched.h>

#include <algorithm>

namespace dsm {

std::atomic<int>& SpinPolicy::LiveLoopThreads() {
  static std::atomic<int> live{0};
  return live;
}

int SpinPolicy::UsableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

SpinPolicy::SpinPolicy(const Config& config)
    : cap_(std::max(config.cap, absl::ZeroDuration())),
      vcpus_(config.vcpus > 0 ? config.vcpus : UsableCpus()),
      live_loops_(config.live_loops != nullptr ? config.live_loops : &LiveLoopThreads()) {}

void SpinPolicy::Samples::Add(absl::Duration d) {
  v_[next_] = d;
  next_ = (next_ + 1) % v_.size();
  n_ = std::min(n_ + 1, v_.size());
}

absl::Duration SpinPolicy::Samples::Median() const {
  std::array<absl::Duration, 16> copy = v_;
  auto mid = copy.begin() + static_cast<std::ptrdiff_t>(n_ / 2);
  std::nth_element(copy.begin(), mid, copy.begin() + static_cast<std::ptrdiff_t>(n_));
  return *mid;
}

bool SpinPolicy::spinning_allowed() const {
  // The loop needs a vCPU of its own, and so does whatever it waits for.
  return cap_ > absl::ZeroDuration() &&
         live_loops_->load(std::memory_order_relaxed) <= vcpus_ - 1;
}

void SpinPolicy::CloseWindow(bool hit, absl::Time now) {
  window_open_ = false;
  if (hit) {
    ++counters_.hits;
    misses_in_row_ = 0;
    next_back_off_ = kMinBackOff;
    return;
  }
  ++counters_.misses;
  if (++misses_in_row_ < kMissesToBackOff) return;
  ++counters_.back_offs;
  misses_in_row_ = 0;
  back_off_until_ = now + next_back_off_;
  next_back_off_ = std::min(2 * next_back_off_, kMaxBackOff);
}

void SpinPolicy::OnSend(absl::Time now) {
  // The wait is measured from the first unanswered send, unless that one's window is long
  // over (its peer may never answer): then this send starts a new wait.
  if (awaiting_ && now - await_start_ <= cap_) return;
  awaiting_ = true;
  await_start_ = now;
}

void SpinPolicy::OnInput(absl::Time now, bool message) {
  if (window_open_) CloseWindow(now <= window_end_ + kHitSlack, now);
  if (message) awaiting_ = false;
  if (last_input_ != absl::InfinitePast()) input_gaps_.Add(now - last_input_);
  last_input_ = now;
}

absl::Duration SpinPolicy::SpinFor(absl::Time now) {
  if (window_open_ && now > window_end_) CloseWindow(false, now);
  if (!spinning_allowed() || now < back_off_until_) return absl::ZeroDuration();
  absl::Time end = absl::InfinitePast();
  if (awaiting_) end = await_start_ + cap_;
  // A stream: inputs have lately come at most the cap apart. (A stricter cap/2 was
  // bistable: a home whose gaps drifted past it stopped spinning, its sleeps lengthened the
  // gaps, and it never spun again; measured 2x slower read faults in half the runs.)
  if (last_input_ != absl::InfinitePast() && !input_gaps_.empty()) {
    const absl::Duration gap = input_gaps_.Median();
    if (gap <= cap_) {
      end = std::max(end, last_input_ + std::clamp(kWindowFactor * gap,
                                                   std::min(kMinWindow, cap_), cap_));
    }
  }
  if (end <= now) return absl::ZeroDuration();
  if (!window_open_) ++counters_.windows;
  window_open_ = true;
  window_end_ = end;
  return end - now;
}

}  // namespace dsm
