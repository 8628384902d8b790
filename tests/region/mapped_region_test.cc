// MappedRegion and Evictor against a real userfaultfd: what each port call does to the
// mapping, observed through memory reads, a faulting thread (its fault events) and mincore(2),
// and the defined outcome when the kernel call fails. Needs root (or
// vm.unprivileged_userfaultfd=1); skips otherwise.
#include "region/mapped_region.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "fault/fault_server.h"
#include "gtest/gtest.h"
#include "region/eviction.h"

namespace dsm {
namespace {

using ::dsm::testing::FaultServer;
using coherence::PageState;

constexpr size_t kPages = 16;
const absl::Duration kWait = absl::Seconds(10);  // bound on waiting for a fault event

// The engine's side of a region, recording what the region sends and reports.
class TestHost final : public RegionHost {
 public:
  TestHost(Userfaultfd* uffd, Evictor* evictor) : uffd_(uffd), evictor_(evictor) {}
  void SendMessage(Message&& m) override { sent.push_back(std::move(m)); }
  Userfaultfd& uffd() override { return *uffd_; }
  void ReportLost(const std::string&, PageIndex first, uint64_t count) override {
    lost.push_back({first, count});
  }
  void FlushLostSoon(RegionId) override { ++flushes_asked; }
  Evictor* evictor() override { return evictor_; }

  std::vector<Message> sent;
  int flushes_asked = 0;
  std::vector<std::pair<PageIndex, uint64_t>> lost;

 private:
  Userfaultfd* uffd_;
  Evictor* evictor_;
};

class MappedRegionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Userfaultfd>> u = Userfaultfd::Open();
    if (absl::IsPermissionDenied(u.status()) || absl::IsUnimplemented(u.status())) {
      GTEST_SKIP() << u.status();
    }
    ASSERT_TRUE(u.ok()) << u.status();
    uffd_ = std::move(*u);
  }
  void TearDown() override {
    server_.reset();  // before the region: a blocked thread must have been released
    region_.reset();
    host_.reset();
    evictor_.reset();
  }

  // Node 0 of 2 maps a region homed at node 1 (no home storage here).
  void Map(size_t budget_pages = 0) {
    if (budget_pages > 0) {
      Options o;
      o.cache_budget_bytes = budget_pages * kPageSize;
      o.lock_memory = false;
      evictor_ = std::make_unique<Evictor>(o);
    }
    host_ = std::make_unique<TestHost>(uffd_.get(), evictor_.get());
    RegionOptions ro;
    ro.name = "mapped_region_test";
    ro.size = kPages * kPageSize;
    ro.home = 1;
    auto r = MappedRegion::Create(ro, /*self=*/0, /*cluster_size=*/2, host_.get());
    ASSERT_TRUE(r.ok()) << r.status();
    region_ = std::move(*r);
    // Records every fault; serves none (the test resolves them through the region).
    server_ = std::make_unique<FaultServer>(*uffd_, [](Userfaultfd&, const FaultEvent&) {});
  }

  uint8_t* Page(PageIndex p) { return static_cast<uint8_t*>(region_->data()) + p * kPageSize; }
  static std::vector<uint8_t> Filled(uint8_t v) { return std::vector<uint8_t>(kPageSize, v); }

  // Whether page p is backed by memory (mincore: never faults).
  bool Resident(PageIndex p) {
    unsigned char v = 0;
    EXPECT_EQ(mincore(Page(p), kPageSize, &v), 0) << strerror(errno);
    return (v & 1) != 0;
  }

  // Waits (bounded) until the fault server has seen a fault of `kind` on page p.
  bool SawFault(FaultEvent::Kind kind, PageIndex p) {
    const absl::Time deadline = absl::Now() + kWait;
    while (absl::Now() < deadline) {
      for (const FaultEvent& e : server_->events()) {
        if (e.kind == kind && e.address == reinterpret_cast<uintptr_t>(Page(p))) return true;
      }
      absl::SleepFor(absl::Milliseconds(1));
    }
    return false;
  }

  // A kernel access to page p (no fault in this thread): false with EFAULT when the page is
  // poisoned or inaccessible.
  bool KernelCanRead(PageIndex p) {
    int fds[2];
    EXPECT_EQ(pipe(fds), 0);
    const ssize_t n = write(fds[1], Page(p), 16);
    const int err = errno;
    close(fds[0]);
    close(fds[1]);
    if (n < 0) {
      EXPECT_EQ(err, EFAULT);
    }
    return n == 16;
  }

  // The home's answer to the last request node 0 sent.
  Message Answer(MsgType type, uint64_t arg, const std::vector<uint8_t>& payload) {
    EXPECT_FALSE(host_->sent.empty());
    const Message& req = host_->sent.back();
    Message m;
    m.type = type;
    m.src = 1;
    m.dst = 0;
    m.region = region_->id();
    m.page = req.page;
    m.req_id = req.req_id;
    m.arg = arg;
    m.payload = payload;
    return m;
  }

  std::unique_ptr<Userfaultfd> uffd_;
  std::unique_ptr<Evictor> evictor_;
  std::unique_ptr<TestHost> host_;
  std::unique_ptr<MappedRegion> region_;
  std::unique_ptr<FaultServer> server_;
};

TEST_F(MappedRegionTest, InstallSharedMapsTheDataReadOnly) {
  Map();
  ASSERT_TRUE(region_->Install(3, Filled('a').data(), PageState::kShared).ok());
  EXPECT_EQ(region_->pages_installed(), 1u);
  EXPECT_EQ(std::memcmp(Page(3), Filled('a').data(), kPageSize), 0);
  std::thread writer([&] { Page(3)[0] = 'z'; });
  ASSERT_TRUE(SawFault(FaultEvent::Kind::kWriteProtect, 3)) << "the store did not fault";
  EXPECT_EQ(Page(3)[0], 'a');  // blocked before the store
  ASSERT_TRUE(region_->SetAccess(3, PageState::kModified).ok());  // unprotects and wakes
  writer.join();
  EXPECT_EQ(Page(3)[0], 'z');
}

TEST_F(MappedRegionTest, InstallModifiedIsWritableAtOnce) {
  Map();
  ASSERT_TRUE(region_->Install(4, Filled('b').data(), PageState::kModified).ok());
  Page(4)[7] = 'w';  // would block this thread forever if it faulted
  EXPECT_EQ(Page(4)[7], 'w');
  EXPECT_EQ(server_->event_count(), 0u);
}

TEST_F(MappedRegionTest, DowngradeRunWriteProtectsEveryPageOfTheRun) {
  Map();
  for (PageIndex p = 0; p < 4; ++p) {
    ASSERT_TRUE(region_->Install(p, Filled('c').data(), PageState::kModified).ok());
  }
  ASSERT_TRUE(region_->DowngradeRun(0, 4).ok());
  std::thread writer([&] { Page(2)[0] = 'z'; });
  ASSERT_TRUE(SawFault(FaultEvent::Kind::kWriteProtect, 2));
  ASSERT_TRUE(region_->SetAccess(2, PageState::kModified).ok());
  writer.join();
  EXPECT_EQ(Page(2)[0], 'z');
}

TEST_F(MappedRegionTest, DropUnmapsThePage) {
  Map();
  ASSERT_TRUE(region_->Install(5, Filled('d').data(), PageState::kShared).ok());
  EXPECT_TRUE(Resident(5));
  ASSERT_TRUE(region_->Drop(5).ok());
  EXPECT_FALSE(Resident(5));
  // The next access faults as a miss; installing new data answers it.
  std::atomic<uint8_t> seen{0};
  std::thread reader([&] { seen = Page(5)[0]; });
  ASSERT_TRUE(SawFault(FaultEvent::Kind::kMissing, 5));
  ASSERT_TRUE(region_->Install(5, Filled('e').data(), PageState::kShared).ok());
  reader.join();
  EXPECT_EQ(seen.load(), 'e');
}

TEST_F(MappedRegionTest, InstallRunMapsEveryPageReadOnlyInOneCall) {
  Map();
  std::vector<uint8_t> run(4 * kPageSize);
  for (size_t i = 0; i < 4; ++i) std::memset(run.data() + i * kPageSize, 'k' + i, kPageSize);
  ASSERT_TRUE(region_->InstallRun(8, 4, run.data()).ok());
  EXPECT_EQ(region_->pages_installed(), 4u);
  for (PageIndex p = 8; p < 12; ++p) {
    EXPECT_EQ(std::memcmp(Page(p), run.data() + (p - 8) * kPageSize, kPageSize), 0) << p;
  }
  std::thread writer([&] { Page(10)[0] = 'z'; });
  ASSERT_TRUE(SawFault(FaultEvent::Kind::kWriteProtect, 10));
  ASSERT_TRUE(region_->SetAccess(10, PageState::kModified).ok());
  writer.join();
}

TEST_F(MappedRegionTest, FailPoisonsThePageAndReportsTheLoss) {
  Map();
  ASSERT_TRUE(region_->Install(6, Filled('f').data(), PageState::kShared).ok());
  region_->Fail(6, ErrorCode::kPageLost);
  EXPECT_FALSE(KernelCanRead(6));  // poisoned at once, reported after the event
  EXPECT_EQ(host_->flushes_asked, 1);
  region_->FlushLost();
  ASSERT_EQ(host_->lost.size(), 1u);
  EXPECT_EQ(host_->lost[0], (std::pair<PageIndex, uint64_t>{6, 1}));
  EXPECT_FALSE(Resident(6));
  EXPECT_FALSE(KernelCanRead(6));  // poisoned (or, without UFFDIO_POISON, inaccessible)
}

// Pages lost in one event are reported as contiguous ranges, one report per range, whatever
// order they failed in; a page failed twice is reported once.
TEST_F(MappedRegionTest, PagesLostTogetherAreReportedAsRanges) {
  Map();
  for (PageIndex p : {3, 4, 5, 5, 6, 9, 12, 13}) region_->Fail(p, ErrorCode::kPageLost);
  EXPECT_EQ(host_->flushes_asked, 1);  // one flush for the whole event
  EXPECT_TRUE(host_->lost.empty());
  region_->FlushLost();
  using Range = std::pair<PageIndex, uint64_t>;
  EXPECT_EQ(host_->lost, (std::vector<Range>{{3, 4}, {9, 1}, {12, 2}}));
  // Another cause ends the open range: each range has one cause.
  region_->Fail(1, ErrorCode::kPageLost);
  region_->Fail(2, ErrorCode::kIoError);
  region_->FlushLost();
  EXPECT_EQ(host_->lost, (std::vector<Range>{{3, 4}, {9, 1}, {12, 2}, {1, 1}, {2, 1}}));
  for (PageIndex p : {1, 2, 3, 9, 13}) EXPECT_FALSE(KernelCanRead(p)) << p;
}

// The cache's install fails in the kernel (the range is no longer registered): the grant goes
// back to the home, the page is reported lost and made inaccessible -- never left silently
// unmapped with a waiter blocked forever.
TEST_F(MappedRegionTest, FailedInstallIsReportedLostAndHandedBack) {
  Map();
  ASSERT_TRUE(uffd_->Unregister(region_->data(), region_->size()).ok());
  region_->cache().OnFault(0, /*write=*/false, absl::Now());
  ASSERT_EQ(host_->sent.size(), 1u);
  ASSERT_EQ(host_->sent[0].type, MsgType::kGetS);
  region_->cache().OnMessage(Answer(MsgType::kData, static_cast<uint64_t>(Grant::kShared),
                                    Filled('g')),
                             absl::Now());
  EXPECT_EQ(region_->cache().counters().port_failures, 1u);
  EXPECT_TRUE(region_->cache().lost(0));
  ASSERT_EQ(host_->sent.size(), 2u);
  EXPECT_EQ(host_->sent[1].type, MsgType::kPut);
  EXPECT_EQ(host_->sent[1].arg, static_cast<uint64_t>(PutKind::kDropClean));
  EXPECT_EQ(host_->sent[1].dst, 1u);
  region_->FlushLost();
  ASSERT_EQ(host_->lost.size(), 1u);
  EXPECT_EQ(host_->lost[0].first, 0u);
  EXPECT_FALSE(KernelCanRead(0));
  ASSERT_EQ(mprotect(Page(0), kPageSize, PROT_READ | PROT_WRITE), 0);  // for the teardown
}

// Sync when the kernel refuses the write-protect: the error reaches the caller and the page
// stays Modified (writable, the only copy), nothing is written back.
TEST_F(MappedRegionTest, FailedWriteProtectFailsTheSyncAndKeepsThePage) {
  Map();
  region_->cache().OnFault(1, /*write=*/true, absl::Now());
  region_->cache().OnMessage(Answer(MsgType::kData, static_cast<uint64_t>(Grant::kModified),
                                    Filled('h')),
                             absl::Now());
  ASSERT_EQ(region_->cache().state(1), PageState::kModified);
  ASSERT_TRUE(uffd_->Unregister(region_->data(), region_->size()).ok());
  const size_t sent = host_->sent.size();
  std::vector<NodeId> homes;
  absl::StatusOr<size_t> written = region_->cache().WriteBackAll(&homes);
  EXPECT_FALSE(written.ok());
  EXPECT_EQ(region_->cache().state(1), PageState::kModified);
  EXPECT_EQ(host_->sent.size(), sent);
  Page(1)[0] = 'x';  // still writable
  EXPECT_EQ(Page(1)[0], 'x');
}

// The Evictor keeps the node within its budget: every victim is reported once, a dirty one
// written back with its contents, a clean one only dropped, and each is unmapped.
TEST_F(MappedRegionTest, EvictorKeepsTheBudgetAndWritesBackOnlyDirtyVictims) {
  constexpr size_t kBudget = 4;
  Map(kBudget);
  constexpr PageIndex kTouched = 10;
  for (PageIndex p = 0; p < kTouched; ++p) {
    const bool write = p % 2 == 0;
    evictor_->OnFault(region_.get(), p, write, absl::Now());
    region_->cache().OnMessage(
        Answer(MsgType::kData,
               static_cast<uint64_t>(write ? Grant::kModified : Grant::kShared),
               Filled(static_cast<uint8_t>('A' + p))),
        absl::Now());
    evictor_->Enforce();
    EXPECT_LE(evictor_->replacer().resident(), kBudget) << "after page " << p;
  }
  std::vector<bool> evicted(kTouched, false);
  size_t written_back = 0, dropped = 0;
  for (const Message& m : host_->sent) {
    if (m.type != MsgType::kPut) continue;
    ASSERT_LT(m.page, kTouched);
    EXPECT_FALSE(evicted[m.page]) << "page " << m.page << " reported twice";
    evicted[m.page] = true;
    const bool dirty = m.page % 2 == 0;
    if (dirty) {
      EXPECT_EQ(m.arg, static_cast<uint64_t>(PutKind::kWritebackDrop)) << m.page;
      EXPECT_EQ(m.payload, Filled(static_cast<uint8_t>('A' + m.page))) << m.page;
      ++written_back;
    } else {
      ++dropped;
      EXPECT_EQ(m.arg, static_cast<uint64_t>(PutKind::kDropClean)) << m.page;
      EXPECT_TRUE(m.payload.empty());
    }
  }
  size_t victims = 0;
  for (PageIndex p = 0; p < kTouched; ++p) {
    if (evicted[p]) {
      ++victims;
      EXPECT_FALSE(Resident(p)) << "victim " << p << " still mapped";
      EXPECT_EQ(region_->cache().state(p), PageState::kInvalid);
    } else {
      EXPECT_NE(region_->cache().state(p), PageState::kInvalid) << p;
      EXPECT_EQ(Page(p)[0], 'A' + p);  // survivors keep their data (mapped: no fault)
    }
  }
  EXPECT_EQ(victims, kTouched - evictor_->replacer().resident());
  EXPECT_GE(victims, kTouched - kBudget);
  EXPECT_GT(written_back, 0u);  // both kinds of victim were met
  EXPECT_GT(dropped, 0u);
}

}  // namespace
}  // namespace dsm
