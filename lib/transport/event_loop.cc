#include "transport/event_loop.h"

#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "common/log.h"

namespace dsm {

class EventLoop::WakeOp final : public EventLoop::Op {
 public:
  explicit WakeOp(EventLoop* loop) : loop_(loop) {}
  void OnComplete(int res, uint32_t) override {
    (void)res;
    loop_->wake_pending_.store(false, std::memory_order_release);
    loop_->ArmWakeRead();
  }

 private:
  EventLoop* loop_;
};

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create(unsigned queue_depth) {
  std::unique_ptr<EventLoop> loop(new EventLoop());
  absl::Status s = loop->Init(queue_depth);
  if (!s.ok()) return s;
  return loop;
}

absl::Status EventLoop::Init(unsigned queue_depth) {
  // No SQPOLL (it would burn a core). COOP_TASKRUN | TASKRUN_FLAG: see the header; a kernel
  // that refuses them (EINVAL, before 5.19) gets a flagless ring and a spin that enters the
  // kernel every round. DEFER_TASKRUN: measured no better, and it needs SINGLE_ISSUER.
  io_uring_params p{};
  p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
  int rc = io_uring_queue_init_params(queue_depth, &ring_, &p);
  if (rc == -EINVAL) {
    p = io_uring_params{};
    rc = io_uring_queue_init_params(queue_depth, &ring_, &p);
  }
  if (rc < 0) {
    if (rc == -EPERM || rc == -EACCES) {
      return absl::PermissionDeniedError(
          "io_uring_setup: permission denied; io_uring may be disabled (sysctl "
          "kernel.io_uring_disabled=0 enables it) or blocked by a seccomp profile");
    }
    if (rc == -ENOSYS) return absl::UnimplementedError("io_uring_setup: kernel without io_uring");
    return absl::ErrnoToStatus(-rc, "io_uring_queue_init_params");
  }
  ring_ok_ = true;
  taskrun_flag_ = (p.flags & IORING_SETUP_TASKRUN_FLAG) != 0;
  wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (wake_fd_ < 0) return absl::ErrnoToStatus(errno, "eventfd");
  wake_op_ = std::make_unique<WakeOp>(this);
  // Not submitted here: its completion work would go to the creating thread (see the header).
  ArmWakeRead();
  return absl::OkStatus();
}

EventLoop::~EventLoop() {
  if (ring_ok_) io_uring_queue_exit(&ring_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

void EventLoop::ArmWakeRead() {
  io_uring_sqe* sqe = Prepare(wake_op_.get());
  io_uring_prep_read(sqe, wake_fd_, &wake_buf_, sizeof(wake_buf_), 0);
}

io_uring_sqe* EventLoop::Prepare(Op* op) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  io_uring_sqe_set_data(sqe, op);
  return sqe;
}

void EventLoop::Submit() {
  int rc = io_uring_submit(&ring_);
  if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
    DSM_LOG(ERROR) << "io_uring_submit: " << std::strerror(-rc);
  }
}

namespace {
// The loop whose Poll() this thread is inside (set for the call only, so a loop destroyed
// and another created at its address is never mistaken for it).
thread_local const EventLoop* polling_loop = nullptr;

class PollingScope {
 public:
  explicit PollingScope(const EventLoop* loop) : outer_(polling_loop) { polling_loop = loop; }
  ~PollingScope() { polling_loop = outer_; }
  PollingScope(const PollingScope&) = delete;
  PollingScope& operator=(const PollingScope&) = delete;

 private:
  const EventLoop* outer_;
};
}  // namespace

void EventLoop::Post(absl::AnyInvocable<void()> fn) {
  {
    absl::MutexLock l(&mu_);
    posted_.push_back(std::move(fn));
  }
  has_posted_.store(true, std::memory_order_release);
  // From inside this loop's own Poll() (a message to this node, a task queued by a handler)
  // nobody sleeps: a Poll() whose handler posted returns without waiting, and every Poll()
  // runs the posted tasks before it waits. The eventfd write, its completion and its re-arm
  // would be a syscall and two ring operations per task for nothing (two tasks per fault on a
  // page homed here).
  if (polling_loop == this) return;
  Wakeup();
}

void EventLoop::Wakeup() {
  // One eventfd write per sleep is enough; the flag saves syscalls under bursts.
  if (wake_pending_.exchange(true, std::memory_order_acq_rel)) return;
  uint64_t one = 1;
  ssize_t n = write(wake_fd_, &one, sizeof(one));
  (void)n;
}

int EventLoop::RunPosted() {
  if (!has_posted_.load(std::memory_order_acquire)) return 0;
  std::deque<absl::AnyInvocable<void()>> batch;
  {
    absl::MutexLock l(&mu_);
    batch.swap(posted_);
    has_posted_.store(false, std::memory_order_relaxed);
  }
  for (auto& fn : batch) fn();
  return static_cast<int>(batch.size());
}

int EventLoop::Dispatch() {
  int handled = 0;
  io_uring_cqe* cqe = nullptr;
  // Completions may arm new operations; keep draining until the CQ is empty.
  while (io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe != nullptr) {
    Op* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
    int res = cqe->res;
    uint32_t flags = cqe->flags;
    io_uring_cqe_seen(&ring_, cqe);
    if (op != nullptr) op->OnComplete(res, flags);
    ++handled;
  }
  return handled;
}

EventLoop::TimerId EventLoop::RunAfter(absl::Duration delay, absl::AnyInvocable<void()> fn) {
  const TimerId id = next_timer_id_++;
  const absl::Time at = absl::Now() + std::max(delay, absl::ZeroDuration());
  timers_.emplace(std::make_pair(at, id), std::move(fn));
  timer_deadline_.emplace(id, at);
  return id;
}

void EventLoop::CancelTimer(TimerId id) {
  auto it = timer_deadline_.find(id);
  if (it == timer_deadline_.end()) return;
  timers_.erase(std::make_pair(it->second, id));
  timer_deadline_.erase(it);
}

int EventLoop::RunTimers(absl::Time now) {
  int ran = 0;
  // A timer may add or cancel timers: take each out before running it.
  while (!timers_.empty() && timers_.begin()->first.first <= now) {
    auto node = timers_.extract(timers_.begin());
    timer_deadline_.erase(node.key().second);
    node.mapped()();
    ++ran;
  }
  return ran;
}

int EventLoop::Poll(absl::Duration spin, absl::Duration timeout) {
  PollingScope scope(this);
  Submit();
  absl::Time now = absl::Now();
  int handled = RunPosted() + Dispatch() + RunTimers(now);
  if (handled > 0) {
    Submit();
    return handled;
  }
  if (spin > absl::ZeroDuration()) {
    const absl::Time until = now + spin;
    do {
      handled = RunPosted() + Dispatch() + RunTimers(now);
      if (handled > 0) {
        Submit();
        return handled;
      }
      // Peeking the CQ alone never sees socket or poll completions: they are finished by task
      // work that runs only when this thread enters the kernel (measured on 6.18: a pure
      // user-space spin waited out its whole budget every time). GETEVENTS runs it; with
      // TASKRUN_FLAG only when the kernel says some is pending.
      if (!taskrun_flag_ || (IO_URING_READ_ONCE(*ring_.sq.kflags) & IORING_SQ_TASKRUN) != 0) {
        io_uring_get_events(&ring_);
      }
      // Let a runnable thread on this vCPU (often the very peer or application thread we
      // wait for, when threads outnumber vCPUs) run instead of burning the slice. Measured:
      // dropping it made remote faults slower (1.1-1.5x), with or without the ring flags.
      sched_yield();
      now = absl::Now();
    } while (now < until);
  }
  if (!timers_.empty()) {
    timeout = std::min(timeout, timers_.begin()->first.first - absl::Now());
  }
  const timespec t = absl::ToTimespec(std::max(timeout, absl::ZeroDuration()));
  __kernel_timespec ts{t.tv_sec, t.tv_nsec};
  io_uring_cqe* cqe = nullptr;
  int rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
  if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
    DSM_LOG(ERROR) << "io_uring_submit_and_wait_timeout: " << std::strerror(-rc);
  }
  handled = RunPosted() + Dispatch() + RunTimers(absl::Now());
  Submit();
  return handled;
}

}  // namespace dsm
