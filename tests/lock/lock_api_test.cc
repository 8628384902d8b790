// The public API (include/dsm/lock.h) over a miniature engine: one thread that owns a
// LockTable, a LockClient per simulated node and the barrier logic, wired the way the
// integration note in lock/lock_client.h asks the node layer to wire them.
#include "dsm/lock.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "dsm/node.h"
#include "dsm/region.h"
#include "lock/api_internal.h"
#include "lock/barrier.h"
#include "lock/lock_client.h"
#include "lock/lock_table.h"
#include "protocol/validation.h"

namespace dsm {
namespace {

using lock::BarrierArbiter;
using lock::BarrierClient;
using lock::LockClient;
using lock::LockTable;

class MiniEngine {
 public:
  explicit MiniEngine(size_t nodes) : n_(nodes) {
    for (NodeId i = 0; i < n_; ++i) {
      ports_.push_back(std::make_unique<Port>(this, i));
      clients_.push_back(std::make_unique<LockClient>(LockClient::Config{i}, ports_[i].get()));
      bclients_.push_back(
          std::make_unique<BarrierClient>(BarrierClient::Config{i}, ports_[i].get()));
      barbiters_.push_back(
          std::make_unique<BarrierArbiter>(BarrierArbiter::Config{i}, ports_[i].get()));
    }
    LockTable::Config c;
    c.self = 0;
    c.region = 1;
    c.region_size = 4096;
    table_ = std::make_unique<LockTable>(c, ports_[0].get());
    thread_ = std::thread([this] { Loop(); });
  }
  ~MiniEngine() {
    Post([this] { stop_ = true; });
    thread_.join();
  }

  void Post(std::function<void()> f) {
    absl::MutexLock l(&mu_);
    tasks_.push_back(std::move(f));
  }
  template <typename T>
  T Call(std::function<T()> f) {
    absl::Notification done;
    T out{};
    Post([&] {
      out = f();
      done.Notify();
    });
    done.WaitForNotification();
    return out;
  }

  LockClient& client(NodeId n) { return *clients_[n]; }
  BarrierClient& bclient(NodeId n) { return *bclients_[n]; }
  size_t size() const { return n_; }
  std::atomic<uint64_t> next_lock_id{1};

 private:
  struct Port : lock::LockTablePort, lock::LockClientPort, lock::BarrierPort {
    Port(MiniEngine* engine, NodeId node) : e(engine), self(node) {}
    virtual ~Port() = default;
    void Send(Message&& m) override {
      m.src = self;
      e->inflight_.push_back(std::move(m));  // engine thread only; delivered after the call
    }
    MiniEngine* e;
    NodeId self;
  };

  void Loop() {
    while (!stop_) {
      std::deque<std::function<void()>> tasks;
      {
        absl::MutexLock l(&mu_);
        mu_.AwaitWithTimeout(absl::Condition(
                                 +[](std::deque<std::function<void()>>* t) { return !t->empty(); },
                                 &tasks_),
                             absl::Milliseconds(1));
        tasks.swap(tasks_);
      }
      for (auto& t : tasks) {
        t();
        Pump();
      }
      const absl::Time now = absl::Now();
      table_->OnTick(now);
      for (NodeId i = 0; i < n_; ++i) {
        clients_[i]->OnTick(now);
        bclients_[i]->OnTick(now);
      }
      Pump();
    }
  }

  void Pump() {
    while (!inflight_.empty()) {
      Message m = std::move(inflight_.front());
      inflight_.pop_front();
      EXPECT_TRUE(CheckMessage(m, n_).ok());
      switch (m.type) {
        case MsgType::kLockAcquire:
        case MsgType::kLockRelease:
        case MsgType::kLockCancel:
        case MsgType::kLockPassed:
          table_->OnMessage(m, absl::Now());
          break;
        case MsgType::kLockReply:
        case MsgType::kLockSuccessor:
        case MsgType::kLockHandoff:
          clients_[m.dst]->OnMessage(m, absl::Now());
          break;
        case MsgType::kBarrierEnter:
        case MsgType::kBarrierCancel:
          barbiters_[m.dst]->OnMessage(m);
          break;
        case MsgType::kBarrierReply:
          bclients_[m.dst]->OnMessage(m);
          break;
        default:
          ADD_FAILURE() << "unexpected message type";
      }
    }
  }

  const size_t n_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stop_ = false;  // engine thread only
  std::deque<Message> inflight_;
  std::vector<std::unique_ptr<Port>> ports_;
  std::vector<std::unique_ptr<LockClient>> clients_;
  std::vector<std::unique_ptr<BarrierClient>> bclients_;
  std::vector<std::unique_ptr<BarrierArbiter>> barbiters_;
  std::unique_ptr<LockTable> table_;
  std::thread thread_;
};

// What the node layer's EngineRegion/EngineNode do (see the integration note), over the
// miniature engine: one region of 4096 bytes, arbitrated by node 0.
class FakeRegionImpl final : public internal::RegionImpl,
                             public std::enable_shared_from_this<FakeRegionImpl> {
 public:
  FakeRegionImpl(MiniEngine* e, NodeId self) : e_(e), self_(self) {}
  void* data() const override { return nullptr; }
  size_t size() const override { return 4096; }
  const std::string& name() const override { return name_; }
  absl::Status Sync() override { return absl::OkStatus(); }
  absl::Status Unmap() override {
    if (unmapped_.exchange(true)) return absl::OkStatus();
    // As the node layer does: the unmap releases this node's locks in the region.
    return e_->Call<absl::Status>([this] {
      for (uint64_t id : granted_) (void)e_->client(self_).Release(id);
      granted_.clear();
      return absl::OkStatus();
    });
  }
  uint64_t RequestLock(const LockRequest& request, LockCallback done) override {
    const uint64_t id = e_->next_lock_id.fetch_add(1);
    // The grant may arrive after the Region is gone: its bookkeeping is reached weakly.
    std::weak_ptr<FakeRegionImpl> weak = weak_from_this();
    e_->Post([this, request, done = std::move(done), id, weak]() mutable {
      e_->client(self_).Acquire(
          1, 0, 4096, request, absl::Now(),
          [weak, done = std::move(done)](absl::StatusOr<LockHandle> h) {
            if (std::shared_ptr<FakeRegionImpl> self = weak.lock(); self && h.ok()) {
              self->granted_.push_back(h->id());
            }
            done(std::move(h));
          },
          id);
    });
    return id;
  }
  absl::Status ReleaseLock(uint64_t id) override {
    if (unmapped_.load()) return absl::FailedPreconditionError("unmapped");
    return e_->Call<absl::Status>([this, id] {
      granted_.erase(std::remove(granted_.begin(), granted_.end(), id), granted_.end());
      return e_->client(self_).Release(id);
    });
  }

 private:
  MiniEngine* const e_;
  const NodeId self_;
  const std::string name_ = "fake";
  std::atomic<bool> unmapped_{false};
  std::vector<uint64_t> granted_;  // engine thread only
};

class FakeNodeImpl final : public internal::NodeImpl {
 public:
  FakeNodeImpl(MiniEngine* e, NodeId self) : e_(e), self_(self) {}
  NodeId id() const override { return self_; }
  size_t cluster_size() const override { return e_->size(); }
  absl::StatusOr<std::shared_ptr<internal::RegionImpl>> MapRegion(
      const RegionOptions&) override {
    return std::make_shared<FakeRegionImpl>(e_, self_);
  }
  absl::StatusOr<Stats> GetStats() const override {
    return absl::UnimplementedError("no stats in the fake");
  }
  absl::Status Shutdown() override { return absl::OkStatus(); }
  absl::Status Finalize(absl::Time) override { return Shutdown(); }
  void BarrierAsync(const std::string& name, const std::vector<NodeId>& members,
                    absl::Time deadline, std::function<void(absl::Status)> done) override {
    e_->Post([this, name, members, deadline, done = std::move(done)]() mutable {
      absl::StatusOr<uint64_t> mask = lock::MemberMask(members, e_->size(), self_);
      if (!mask.ok()) return done(mask.status());
      e_->bclient(self_).Enter(name, *mask, deadline, absl::Now(), std::move(done));
    });
  }

 private:
  MiniEngine* const e_;
  const NodeId self_;
};

// A public Node and one mapped Region over the fakes, as an application holds them.
struct FakeNode {
  FakeNode(MiniEngine* e, NodeId self)
      : node(internal::ApiAccess::MakeNode(std::make_unique<FakeNodeImpl>(e, self))),
        region(std::move(node->MapRegion(RegionOptions{}).value())) {}
  Region* operator->() const { return region.get(); }

  std::unique_ptr<Node> node;
  std::unique_ptr<Region> region;
};

TEST(LockApi, BlockingLockGivesMutualExclusionAcrossNodesAndThreads) {
  MiniEngine engine(3);
  std::vector<std::unique_ptr<FakeNode>> nodes;
  for (NodeId i = 0; i < 3; ++i) nodes.push_back(std::make_unique<FakeNode>(&engine, i));
  uint64_t counter = 0;  // protected only by the dsm lock on [0, 8)
  constexpr int kIters = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIters; ++i) {
        absl::StatusOr<LockGuard> g = (*nodes[t % 3])->Lock(0, 8, LockMode::kExclusive);
        ASSERT_TRUE(g.ok()) << g.status();
        const uint64_t v = counter;
        if (i % 16 == 0) std::this_thread::yield();
        counter = v + 1;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(counter, 6u * kIters);
}

TEST(LockApi, TryLockAndDeadline) {
  MiniEngine engine(2);
  FakeNode a(&engine, 0), b(&engine, 1);
  absl::StatusOr<LockGuard> held = a->Lock(100, 10, LockMode::kShared);
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_TRUE(b->TryLock(105, 1, LockMode::kShared).ok());
  EXPECT_EQ(b->TryLock(105, 1, LockMode::kExclusive).status().code(), absl::StatusCode::kAborted);
  const absl::Time start = absl::Now();
  absl::StatusOr<LockGuard> late =
      b->Lock(0, 200, LockMode::kExclusive, absl::Now() + absl::Milliseconds(30));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(30));
  EXPECT_TRUE(held->Unlock().ok());
  EXPECT_FALSE(held->owns_lock());
  EXPECT_TRUE(b->Lock(0, 200, LockMode::kExclusive).ok());  // released by the guard's scope end
  EXPECT_TRUE(a->TryLock(0, 200, LockMode::kExclusive).ok());
  EXPECT_EQ(a->Lock(4090, 10, LockMode::kShared).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(LockApi, GuardMovesAndReleases) {
  MiniEngine engine(1);
  FakeNode a(&engine, 0);
  absl::StatusOr<LockGuard> g = a->Lock(0, 1, LockMode::kExclusive);
  ASSERT_TRUE(g.ok());
  const uint64_t id = g->handle().id();
  LockGuard moved = std::move(*g);
  EXPECT_FALSE(g->owns_lock());
  EXPECT_TRUE(moved.owns_lock());
  LockHandle h = moved.Release();
  EXPECT_EQ(h.id(), id);
  EXPECT_FALSE(moved.owns_lock());
  EXPECT_EQ(a->TryLock(0, 1, LockMode::kExclusive).status().code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(a->Unlock(h).ok());
  EXPECT_EQ(a->Unlock(h).code(), absl::StatusCode::kNotFound);
  { LockGuard scoped = *a->Lock(0, 1, LockMode::kExclusive); }
  EXPECT_TRUE(a->TryLock(0, 1, LockMode::kExclusive).ok());
}

TEST(LockApi, AsyncLockCanBeCancelled) {
  MiniEngine engine(2);
  FakeNode a(&engine, 0), b(&engine, 1);
  absl::StatusOr<LockGuard> held = a->Lock(0, 1, LockMode::kExclusive);
  ASSERT_TRUE(held.ok());
  absl::Notification done;
  absl::Status result;
  const uint64_t id = b->LockAsync(0, 1, LockMode::kShared, absl::InfiniteFuture(),
                                  [&](absl::StatusOr<LockHandle> h) {
                                    result = h.status();
                                    done.Notify();
                                  });
  EXPECT_FALSE(done.WaitForNotificationWithTimeout(absl::Milliseconds(20)));
  EXPECT_TRUE(b->Cancel(id).ok());
  done.WaitForNotification();
  EXPECT_EQ(result.code(), absl::StatusCode::kCancelled);
}

TEST(LockApi, BarrierReleasesEveryThread) {
  MiniEngine engine(3);
  std::vector<std::unique_ptr<FakeNode>> nodes;
  for (NodeId i = 0; i < 3; ++i) nodes.push_back(std::make_unique<FakeNode>(&engine, i));
  std::atomic<int> arrived{0};
  std::vector<std::thread> threads;
  for (NodeId i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      for (int round = 0; round < 20; ++round) {
        arrived.fetch_add(1);
        ASSERT_TRUE(nodes[i]->node->Barrier("round", {}).ok());
        EXPECT_GE(arrived.load(), 3 * (round + 1));  // nobody leaves before all arrived
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(nodes[0]->node->Barrier("pair", {0, 1}, absl::Now() + absl::Milliseconds(10)).code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(nodes[2]->node->Barrier("pair", {0, 1}).code(), absl::StatusCode::kInvalidArgument);
}

// ---- LockGuard lifetime ----

TEST(LockGuard, OutlivesItsRegion) {
  MiniEngine engine(2);
  FakeNode b(&engine, 1);
  LockGuard released_by_destructor;
  LockGuard released_by_unlock;
  {
    FakeNode a(&engine, 0);
    absl::StatusOr<LockGuard> g1 = a->Lock(0, 8, LockMode::kExclusive);
    ASSERT_TRUE(g1.ok()) << g1.status();
    absl::StatusOr<LockGuard> g2 = a->Lock(100, 8, LockMode::kExclusive);
    ASSERT_TRUE(g2.ok()) << g2.status();
    released_by_destructor = std::move(*g1);
    released_by_unlock = std::move(*g2);
    EXPECT_EQ(b->TryLock(0, 8, LockMode::kShared).status().code(), absl::StatusCode::kAborted);
  }  // a's Region and Node are gone; the unmap released both locks
  EXPECT_TRUE(b->TryLock(0, 8, LockMode::kExclusive).ok());
  EXPECT_TRUE(b->TryLock(100, 8, LockMode::kExclusive).ok());
  EXPECT_TRUE(released_by_unlock.owns_lock());
  EXPECT_EQ(released_by_unlock.Unlock().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(released_by_unlock.owns_lock());
  EXPECT_TRUE(released_by_unlock.Unlock().ok());  // owns nothing any more
  EXPECT_TRUE(released_by_destructor.owns_lock());
  // released_by_destructor goes out of scope here, after its region (ASan: no use after free).
}

TEST(LockGuard, OutlivesAnUnmapOfItsRegion) {
  MiniEngine engine(2);
  FakeNode a(&engine, 0), b(&engine, 1);
  absl::StatusOr<LockGuard> g = a->Lock(0, 8, LockMode::kExclusive);
  ASSERT_TRUE(g.ok()) << g.status();
  const LockHandle h = g->handle();
  ASSERT_TRUE(a->Unmap().ok());
  EXPECT_TRUE(b->TryLock(0, 8, LockMode::kExclusive).ok());
  EXPECT_EQ(g->Unlock().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a->Unlock(h).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(a->Unmap().ok());  // idempotent
}

TEST(LockGuard, MovedFromGuardOwnsNothing) {
  MiniEngine engine(2);
  FakeNode a(&engine, 0), b(&engine, 1);
  absl::StatusOr<LockGuard> g = a->Lock(0, 8, LockMode::kExclusive);
  ASSERT_TRUE(g.ok()) << g.status();
  const uint64_t id = g->handle().id();
  LockGuard to(std::move(*g));
  EXPECT_FALSE(g->owns_lock());
  EXPECT_FALSE(g->handle().valid());
  EXPECT_TRUE(g->Unlock().ok());
  EXPECT_FALSE(g->Release().valid());
  EXPECT_TRUE(to.owns_lock());
  EXPECT_EQ(to.handle().id(), id);
  // The moved-from guard's Unlock and destruction did not release the lock.
  *g = LockGuard();
  EXPECT_EQ(b->TryLock(0, 8, LockMode::kShared).status().code(), absl::StatusCode::kAborted);

  // Move-assignment releases what the target held and takes the source's lock.
  absl::StatusOr<LockGuard> other = a->Lock(100, 8, LockMode::kExclusive);
  ASSERT_TRUE(other.ok()) << other.status();
  to = std::move(*other);
  EXPECT_FALSE(other->owns_lock());
  EXPECT_TRUE(b->TryLock(0, 8, LockMode::kExclusive).ok());
  EXPECT_EQ(b->TryLock(100, 8, LockMode::kShared).status().code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(to.Unlock().ok());
  EXPECT_TRUE(b->TryLock(100, 8, LockMode::kExclusive).ok());
}

TEST(LockGuard, SelfMoveKeepsTheLock) {
  MiniEngine engine(2);
  FakeNode a(&engine, 0), b(&engine, 1);
  absl::StatusOr<LockGuard> g = a->Lock(0, 8, LockMode::kExclusive);
  ASSERT_TRUE(g.ok()) << g.status();
  const uint64_t id = g->handle().id();
  LockGuard& alias = *g;
  *g = std::move(alias);
  EXPECT_TRUE(g->owns_lock());
  EXPECT_EQ(g->handle().id(), id);
  EXPECT_EQ(b->TryLock(0, 8, LockMode::kShared).status().code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(g->Unlock().ok());
  EXPECT_TRUE(b->TryLock(0, 8, LockMode::kExclusive).ok());
}

TEST(LockGuard, AdoptsAnAsyncGrant) {
  MiniEngine engine(2);
  FakeNode a(&engine, 0), b(&engine, 1);
  absl::Notification granted;
  absl::StatusOr<LockHandle> handle;
  a->LockAsync(0, 8, LockMode::kExclusive, absl::InfiniteFuture(),
               [&](absl::StatusOr<LockHandle> h) {
                 handle = std::move(h);
                 granted.Notify();
               });
  granted.WaitForNotification();
  ASSERT_TRUE(handle.ok()) << handle.status();
  {
    LockGuard g = a->Adopt(*handle);
    EXPECT_TRUE(g.owns_lock());
    EXPECT_EQ(b->TryLock(0, 8, LockMode::kShared).status().code(), absl::StatusCode::kAborted);
  }
  EXPECT_TRUE(b->TryLock(0, 8, LockMode::kExclusive).ok());
  EXPECT_EQ(a->Unlock(*handle).code(), absl::StatusCode::kNotFound);  // the guard released it
}

TEST(LockApi, GetStatsReportsTheImplementationsError) {
  MiniEngine engine(1);
  FakeNode a(&engine, 0);
  EXPECT_EQ(a.node->GetStats().status().code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace dsm
