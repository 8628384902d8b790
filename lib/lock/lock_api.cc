// The parts of include/dsm/lock.h that are not the node layer's: LockGuard, and the blocking
// and async forms built on RegionLocks::RequestLock / ClusterBarrier::BarrierAsync.
#include <memory>
#include <optional>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/timeouts.h"
#include "dsm/lock.h"

namespace dsm {
namespace {

// A blocking caller's rendezvous with the engine's callback. If the caller stops waiting (the
// engine failed to answer long after the deadline), a late grant is released by the callback.
struct LockWait {
  absl::Mutex mu;
  std::optional<absl::StatusOr<LockHandle>> result ABSL_GUARDED_BY(mu);
  bool abandoned ABSL_GUARDED_BY(mu) = false;
};

// How long past its deadline a blocking call waits for the engine's answer before it gives
// up on the engine (which delivers DeadlineExceeded itself at the deadline).

absl::StatusOr<LockGuard> BlockingLock(RegionLocks* self, const LockRequest& request) {
  auto wait = std::make_shared<LockWait>();
  self->RequestLock(request, [wait, self](absl::StatusOr<LockHandle> r) {
    absl::MutexLock l(&wait->mu);
    if (wait->abandoned) {
      if (r.ok()) (void)self->Unlock(*r);
      return;
    }
    wait->result = std::move(r);
  });
  absl::MutexLock l(&wait->mu);
  const auto ready = [&wait]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(wait->mu) {
    return wait->result.has_value();
  };
  const absl::Time give_up = request.deadline == absl::InfiniteFuture()
                                 ? absl::InfiniteFuture()
                                 : request.deadline + kEngineSlack;
  if (!wait->mu.AwaitWithDeadline(absl::Condition(&ready), give_up)) {
    wait->abandoned = true;
    return absl::DeadlineExceededError("lock: no answer from the node's engine");
  }
  absl::StatusOr<LockHandle> r = std::move(*wait->result);
  if (!r.ok()) return r.status();
  return LockGuard(self, *r);
}

}  // namespace

const char* LockModeName(LockMode mode) {
  switch (mode) {
    case LockMode::kShared: return "shared";
    case LockMode::kExclusive: return "exclusive";
  }
  return "unknown";
}

LockGuard& LockGuard::operator=(LockGuard&& other) noexcept {
  if (this != &other) {
    (void)Unlock();
    owner_ = std::exchange(other.owner_, nullptr);
    handle_ = std::exchange(other.handle_, {});
  }
  return *this;
}

LockGuard::~LockGuard() { (void)Unlock(); }

absl::Status LockGuard::Unlock() {
  if (!owns_lock()) return absl::OkStatus();
  RegionLocks* owner = std::exchange(owner_, nullptr);
  const LockHandle h = std::exchange(handle_, {});
  return owner->Unlock(h);
}

LockHandle LockGuard::Release() {
  owner_ = nullptr;
  return std::exchange(handle_, {});
}

absl::StatusOr<LockGuard> RegionLocks::Lock(uint64_t offset, uint64_t length, LockMode mode,
                                            absl::Time deadline) {
  return BlockingLock(this, LockRequest{offset, length, mode, /*try_lock=*/false, deadline});
}

absl::StatusOr<LockGuard> RegionLocks::TryLock(uint64_t offset, uint64_t length, LockMode mode) {
  return BlockingLock(this, LockRequest{offset, length, mode, /*try_lock=*/true,
                                        absl::InfiniteFuture()});
}

uint64_t RegionLocks::LockAsync(uint64_t offset, uint64_t length, LockMode mode,
                                absl::Time deadline, LockCallback done) {
  return RequestLock(LockRequest{offset, length, mode, /*try_lock=*/false, deadline},
                     std::move(done));
}

absl::Status ClusterBarrier::Barrier(const std::string& name,
                                     const std::vector<NodeId>& members, absl::Time deadline) {
  struct Wait {
    absl::Notification done;
    absl::Status status;
  };
  auto wait = std::make_shared<Wait>();
  BarrierAsync(name, members, deadline, [wait](absl::Status s) {
    wait->status = std::move(s);
    wait->done.Notify();
  });
  const absl::Time give_up =
      deadline == absl::InfiniteFuture() ? absl::InfiniteFuture() : deadline + kEngineSlack;
  if (!wait->done.WaitForNotificationWithDeadline(give_up)) {
    return absl::DeadlineExceededError("barrier: no answer from the node's engine");
  }
  return wait->status;
}

}  // namespace dsm
