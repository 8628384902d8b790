// FaultServer: a test thread that serves one Userfaultfd's faults with a caller's handler and
// records every event it saw. Tests only.
#pragma once

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "fault/userfaultfd.h"

namespace dsm::testing {

class FaultServer {
 public:
  using Handler = std::function<void(Userfaultfd&, const FaultEvent&)>;

  // busy_poll: spin on ReadEvents() instead of blocking in poll(2).
  FaultServer(Userfaultfd& uffd, Handler handler, bool busy_poll = false)
      : uffd_(uffd), handler_(std::move(handler)), busy_poll_(busy_poll),
        stop_fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    thread_ = std::thread([this] { Run(); });
  }
  ~FaultServer() { Stop(); }
  FaultServer(const FaultServer&) = delete;
  FaultServer& operator=(const FaultServer&) = delete;

  void Stop() {
    if (!thread_.joinable()) return;
    stop_.store(true);
    uint64_t one = 1;
    (void)!write(stop_fd_, &one, sizeof(one));
    thread_.join();
    close(stop_fd_);
  }

  std::vector<FaultEvent> events() const {
    absl::MutexLock l(&mu_);
    return events_;
  }
  size_t event_count() const {
    absl::MutexLock l(&mu_);
    return events_.size();
  }
  void ClearEvents() {
    absl::MutexLock l(&mu_);
    events_.clear();
  }

 private:
  void Run() {
    FaultEvent batch[16];
    while (!stop_.load(std::memory_order_relaxed)) {
      if (!busy_poll_) {
        pollfd fds[2] = {{uffd_.fd(), POLLIN, 0}, {stop_fd_, POLLIN, 0}};
        if (poll(fds, 2, -1) < 0) continue;
        if (fds[1].revents != 0) break;
      }
      absl::StatusOr<size_t> n = uffd_.ReadEvents(absl::MakeSpan(batch));
      if (!n.ok()) break;
      for (size_t i = 0; i < *n; ++i) {
        {
          absl::MutexLock l(&mu_);
          events_.push_back(batch[i]);
        }
        handler_(uffd_, batch[i]);
      }
    }
  }

  Userfaultfd& uffd_;
  Handler handler_;
  const bool busy_poll_;
  const int stop_fd_;
  std::atomic<bool> stop_{false};
  mutable absl::Mutex mu_;
  std::vector<FaultEvent> events_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace dsm::testing
