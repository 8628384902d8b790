// Userfaultfd wrapper against the real kernel: MISSING and write-protect faults, kernel
// accesses, poisoning, and the MADV_DONTNEED behaviour the coherence protocol relies on
// (Zap forgets everything: the next access is a MISSING fault, and Copy decides the
// protection afresh). Needs root (or vm.unprivileged_userfaultfd=1); skips otherwise.
#include "fault/userfaultfd.h"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/barrier.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "fault/fault_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsm {
namespace {

using ::dsm::testing::FaultServer;
using Kind = FaultEvent::Kind;

constexpr size_t kPage = 4096;

// An anonymous mapping registered with a fresh Userfaultfd, torn down in order.
class UffdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Userfaultfd>> u = Userfaultfd::Open();
    if (absl::IsPermissionDenied(u.status()) || absl::IsUnimplemented(u.status())) {
      GTEST_SKIP() << u.status();
    }
    ASSERT_TRUE(u.ok()) << u.status();
    uffd_ = std::move(*u);
    void* p = mmap(nullptr, kPages * kPage, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(p, MAP_FAILED);
    base_ = static_cast<char*>(p);
    ASSERT_TRUE(uffd_->Register(base_, kPages * kPage).ok());
    src_ = static_cast<char*>(aligned_alloc(kPage, kPage));
  }
  void TearDown() override {
    server_.reset();
    if (base_ != nullptr) munmap(base_, kPages * kPage);
    free(src_);
  }

  char* page(size_t i) { return base_ + i * kPage; }
  void Fill(char c) { memset(src_, c, kPage); }

  // Serves MISSING faults with a page of `fill_` (write-protected if `copy_wp_`) and
  // write-protect faults by unprotecting.
  void StartDsmLikeServer() {
    server_ = std::make_unique<FaultServer>(*uffd_, [this](Userfaultfd& u, const FaultEvent& e) {
      void* addr = reinterpret_cast<void*>(e.address);
      if (e.kind == Kind::kMissing) {
        absl::Status s = u.Copy(addr, src_, kPage, copy_wp_.load());
        if (absl::IsAlreadyExists(s)) s = u.Wake(addr, kPage);
        EXPECT_TRUE(s.ok()) << s;
      } else {
        absl::Status s = u.WriteProtect(addr, kPage, false);
        EXPECT_TRUE(s.ok()) << s;
      }
    });
  }

  static constexpr size_t kPages = 16;
  std::unique_ptr<Userfaultfd> uffd_;
  char* base_ = nullptr;
  char* src_ = nullptr;
  std::atomic<bool> copy_wp_{true};
  std::unique_ptr<FaultServer> server_;
};

MATCHER_P3(IsEvent, kind, write, addr, "") {
  return arg.kind == kind && arg.write == write &&
         arg.address == reinterpret_cast<uintptr_t>(addr);
}

TEST_F(UffdTest, OpenReportsWriteProtect) {
  EXPECT_TRUE(uffd_->features().write_protect);
  std::printf("features: poison=%d move=%d wp_unpopulated=%d\n", uffd_->features().poison,
              uffd_->features().move, uffd_->features().wp_unpopulated);
}

TEST_F(UffdTest, RegisterRejectsUnalignedRange) {
  EXPECT_FALSE(uffd_->Register(base_ + 1, kPage).ok());
}

TEST_F(UffdTest, ReadEventsReturnsZeroWhenIdle) {
  FaultEvent ev[4];
  absl::StatusOr<size_t> n = uffd_->ReadEvents(absl::MakeSpan(ev));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 0u);
}

TEST_F(UffdTest, MissingReadServedWriteProtectedThenWriteRaisesWpFault) {
  Fill('a');
  StartDsmLikeServer();
  volatile char* p = page(0);
  EXPECT_EQ(p[10], 'a');
  EXPECT_THAT(server_->events(), ::testing::ElementsAre(IsEvent(Kind::kMissing, false, page(0))));
  p[10] = 'b';
  EXPECT_EQ(p[10], 'b');
  EXPECT_THAT(server_->events(),
              ::testing::ElementsAre(IsEvent(Kind::kMissing, false, page(0)),
                                     IsEvent(Kind::kWriteProtect, true, page(0))));
  // Writable now: further writes raise nothing.
  p[11] = 'c';
  EXPECT_EQ(server_->event_count(), 2u);
}

TEST_F(UffdTest, MissingWriteIsReportedAsWrite) {
  Fill('x');
  copy_wp_ = false;
  StartDsmLikeServer();
  volatile char* p = page(1);
  p[0] = 'y';
  EXPECT_EQ(p[0], 'y');
  EXPECT_EQ(p[1], 'x');
  EXPECT_THAT(server_->events(), ::testing::ElementsAre(IsEvent(Kind::kMissing, true, page(1))));
}

TEST_F(UffdTest, CopyOntoMappedPageIsAlreadyExists) {
  Fill('q');
  ASSERT_TRUE(uffd_->Copy(page(2), src_, kPage, false).ok());
  absl::Status s = uffd_->Copy(page(2), src_, kPage, false);
  EXPECT_TRUE(absl::IsAlreadyExists(s)) << s;
}

TEST_F(UffdTest, MultiPageCopyInstallsEveryPage) {
  std::vector<char> src(4 * kPage);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<char>(i / kPage + 1);
  ASSERT_TRUE(uffd_->Copy(page(4), src.data(), 4 * kPage, true).ok());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(page(4 + i)[7], i + 1);
  // A range that runs into a mapped page installs the pages before it, then reports it.
  ASSERT_TRUE(uffd_->Copy(page(9), src.data(), kPage, false).ok());
  absl::Status s = uffd_->Copy(page(8), src.data(), 2 * kPage, false);
  EXPECT_TRUE(absl::IsAlreadyExists(s)) << s;
  EXPECT_EQ(page(8)[0], 1);
}

// True once every thread in `tids` sleeps in the kernel's userfaultfd wait (its wchan), within
// a bounded wait.
bool AllBlockedInFault(const std::vector<std::atomic<pid_t>>& tids) {
  const absl::Time until = absl::Now() + absl::Seconds(30);
  while (absl::Now() < until) {
    bool all = true;
    for (const auto& tid : tids) {
      std::string wchan;
      if (tid.load() != 0) {
        std::ifstream f("/proc/self/task/" + std::to_string(tid.load()) + "/wchan");
        std::getline(f, wchan);
      }
      all = all && wchan == "handle_userfault";
    }
    if (all) return true;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return false;
}

TEST_F(UffdTest, ManyThreadsFaultingOnePageAllSeeIt) {
  constexpr int kThreads = 8;
  Fill('m');
  std::atomic<int> copies{0}, already{0};
  std::vector<std::atomic<pid_t>> tids(kThreads);
  server_ = std::make_unique<FaultServer>(*uffd_, [&](Userfaultfd& u, const FaultEvent& e) {
    // Serve the first fault only once every thread waits on the page.
    if (copies.load() == 0) {
      EXPECT_TRUE(AllBlockedInFault(tids)) << "not every thread blocked in the fault";
    }
    void* addr = reinterpret_cast<void*>(e.address);
    absl::Status s = u.Copy(addr, src_, kPage, false);
    if (absl::IsAlreadyExists(s)) {
      ++already;
      s = u.Wake(addr, kPage);
    } else {
      ++copies;
    }
    EXPECT_TRUE(s.ok()) << s;
  });
  absl::Barrier* barrier = new absl::Barrier(kThreads);
  std::atomic<int> seen{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      tids[static_cast<size_t>(i)] = static_cast<pid_t>(gettid());
      if (barrier->Block()) delete barrier;
      volatile char* p = page(3);
      if (p[i] == 'm') ++seen;
    });
  }
  for (auto& t : threads) t.join();
  server_->Stop();  // the handler may still be counting after it woke the threads
  EXPECT_EQ(seen.load(), kThreads);
  EXPECT_EQ(copies.load(), 1);
  // Each blocked thread queues its own event, but a wake (Copy's or Wake's) also retires the
  // queued events of the range not yet read: only events read before the wake show up twice.
  std::printf("events=%zu copies=%d already_exists+wake=%d\n", server_->event_count(),
              copies.load(), already.load());
  EXPECT_EQ(static_cast<int>(server_->event_count()), copies.load() + already.load());
}

TEST_F(UffdTest, ZapThenReadRefaults) {
  Fill('1');
  StartDsmLikeServer();
  volatile char* p = page(5);
  EXPECT_EQ(p[0], '1');
  ASSERT_TRUE(uffd_->Zap(page(5), kPage).ok());
  Fill('2');
  EXPECT_EQ(p[0], '2');
  EXPECT_THAT(server_->events(), ::testing::ElementsAre(IsEvent(Kind::kMissing, false, page(5)),
                                                        IsEvent(Kind::kMissing, false, page(5))));
}

// --- What the DSM relies on after MADV_DONTNEED on anonymous memory -----------------------

// A Shared (write-protected) page is invalidated; the next read is a MISSING fault, and a
// Copy without WP makes it writable: no uffd-wp bit or marker survives the zap.
TEST_F(UffdTest, ZappedWriteProtectedPageReadFaultsMissingAndCopyWithoutWpIsWritable) {
  Fill('s');
  ASSERT_TRUE(uffd_->Copy(page(6), src_, kPage, /*write_protect=*/true).ok());
  ASSERT_TRUE(uffd_->Zap(page(6), kPage).ok());
  Fill('t');
  copy_wp_ = false;
  StartDsmLikeServer();
  volatile char* p = page(6);
  EXPECT_EQ(p[0], 't');
  p[0] = 'u';
  EXPECT_EQ(p[0], 'u');
  EXPECT_THAT(server_->events(), ::testing::ElementsAre(IsEvent(Kind::kMissing, false, page(6))));
}

// A Shared page is invalidated; the next write is a MISSING write fault (not a WP fault).
TEST_F(UffdTest, ZappedWriteProtectedPageWriteFaultsMissing) {
  Fill('s');
  ASSERT_TRUE(uffd_->Copy(page(7), src_, kPage, true).ok());
  ASSERT_TRUE(uffd_->Zap(page(7), kPage).ok());
  copy_wp_ = false;
  StartDsmLikeServer();
  page(7)[1] = 'w';
  EXPECT_EQ(page(7)[1], 'w');
  EXPECT_THAT(server_->events(), ::testing::ElementsAre(IsEvent(Kind::kMissing, true, page(7))));
}

// A Modified (writable) page is invalidated; the refill is installed write-protected as
// requested, so a write raises a WP fault: the old writable mapping did not survive.
TEST_F(UffdTest, ZappedWritablePageRefilledWithWpRaisesWpFaultOnWrite) {
  Fill('s');
  ASSERT_TRUE(uffd_->Copy(page(8), src_, kPage, false).ok());
  page(8)[0] = 'm';
  ASSERT_TRUE(uffd_->Zap(page(8), kPage).ok());
  copy_wp_ = true;
  StartDsmLikeServer();
  volatile char* p = page(8);
  p[0] = 'n';  // MISSING write -> Copy(WP) -> retried write -> WP fault -> unprotect.
  EXPECT_EQ(p[0], 'n');
  EXPECT_EQ(p[1], 's');
  EXPECT_THAT(server_->events(),
              ::testing::ElementsAre(IsEvent(Kind::kMissing, true, page(8)),
                                     IsEvent(Kind::kWriteProtect, true, page(8))));
}

// Write-protecting an unmapped page (WP_UNPOPULATED installs a uffd-wp marker) still gives a
// MISSING fault on the next read, and Copy without WP then leaves it writable.
TEST_F(UffdTest, WriteProtectOnUnmappedPageStillFaultsMissing) {
  ASSERT_TRUE(uffd_->WriteProtect(page(9), kPage, true).ok());
  Fill('z');
  copy_wp_ = false;
  StartDsmLikeServer();
  volatile char* p = page(9);
  EXPECT_EQ(p[0], 'z');
  p[0] = 'y';
  EXPECT_EQ(p[0], 'y');
  EXPECT_THAT(server_->events(), ::testing::ElementsAre(IsEvent(Kind::kMissing, false, page(9))));
}

// Zap also drops a marker left by WriteProtect on an unmapped page.
TEST_F(UffdTest, ZapDropsWriteProtectMarker) {
  ASSERT_TRUE(uffd_->WriteProtect(page(10), kPage, true).ok());
  ASSERT_TRUE(uffd_->Zap(page(10), kPage).ok());
  Fill('k');
  copy_wp_ = false;
  StartDsmLikeServer();
  page(10)[0] = 'l';
  EXPECT_EQ(page(10)[0], 'l');
  EXPECT_THAT(server_->events(), ::testing::ElementsAre(IsEvent(Kind::kMissing, true, page(10))));
}

// --- Kernel accesses -----------------------------------------------------------------------

TEST_F(UffdTest, KernelReadAndWriteSyscallsAreServedThroughUffd) {
  Fill('k');
  StartDsmLikeServer();  // MISSING -> Copy(WP); WP -> unprotect
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  std::string in(kPage, 'P');
  ASSERT_EQ(write(fds[1], in.data(), kPage), static_cast<ssize_t>(kPage));
  // read(2) writes into an unmapped page: MISSING (write), then WP (write).
  ASSERT_EQ(read(fds[0], page(11), kPage), static_cast<ssize_t>(kPage)) << strerror(errno);
  EXPECT_EQ(page(11)[0], 'P');
  EXPECT_EQ(page(11)[kPage - 1], 'P');
  // write(2) reads from an unmapped page: MISSING (read).
  ASSERT_EQ(write(fds[1], page(12), kPage), static_cast<ssize_t>(kPage)) << strerror(errno);
  std::string out(kPage, 0);
  ASSERT_EQ(read(fds[0], out.data(), kPage), static_cast<ssize_t>(kPage));
  EXPECT_EQ(out, std::string(kPage, 'k'));
  close(fds[0]);
  close(fds[1]);

  // pread(2) from a file into a Shared page: a WP fault raised by the kernel.
  char path[] = "/tmp/dsm_fault_testXXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  unlink(path);
  ASSERT_EQ(pwrite(fd, in.data(), kPage, 0), static_cast<ssize_t>(kPage));
  ASSERT_TRUE(uffd_->Copy(page(13), src_, kPage, true).ok());
  ASSERT_EQ(pread(fd, page(13), kPage, 0), static_cast<ssize_t>(kPage)) << strerror(errno);
  EXPECT_EQ(page(13)[5], 'P');
  close(fd);

  auto ev = server_->events();
  EXPECT_THAT(ev, ::testing::ElementsAre(IsEvent(Kind::kMissing, true, page(11)),
                                         IsEvent(Kind::kWriteProtect, true, page(11)),
                                         IsEvent(Kind::kMissing, false, page(12)),
                                         IsEvent(Kind::kWriteProtect, true, page(13))));
}

// --- Poison --------------------------------------------------------------------------------

TEST_F(UffdTest, PoisonOnMappedPageIsAlreadyExists) {
  if (!uffd_->features().poison) GTEST_SKIP() << "kernel lacks UFFDIO_POISON (Linux 6.6+)";
  Fill('p');
  ASSERT_TRUE(uffd_->Copy(page(14), src_, kPage, false).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(uffd_->Poison(page(14), kPage)));
  ASSERT_TRUE(uffd_->Zap(page(14), kPage).ok());
  EXPECT_TRUE(uffd_->Poison(page(14), kPage).ok());
  // A kernel access to a poisoned page fails with EFAULT instead of killing the process.
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  errno = 0;
  EXPECT_EQ(write(fds[1], page(14), 16), -1);
  EXPECT_EQ(errno, EFAULT);
  close(fds[0]);
  close(fds[1]);
}

void TouchPoisonedPage() {
  signal(SIGBUS, SIG_DFL);  // ASan would catch it and exit instead
  absl::StatusOr<std::unique_ptr<Userfaultfd>> u = Userfaultfd::Open();
  if (!u.ok()) _exit(2);
  char* p = static_cast<char*>(
      mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (!(*u)->Register(p, kPage).ok()) _exit(3);
  if (!(*u)->Poison(p, kPage).ok()) _exit(4);
  volatile char c = *static_cast<volatile char*>(p);
  (void)c;
  _exit(0);
}

TEST(UffdDeathTest, PoisonedPageRaisesSigbus) {
  absl::StatusOr<std::unique_ptr<Userfaultfd>> u = Userfaultfd::Open();
  if (!u.ok()) GTEST_SKIP() << u.status();
  if (!(*u)->features().poison) GTEST_SKIP() << "kernel lacks UFFDIO_POISON (Linux 6.6+)";
  u->reset();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(TouchPoisonedPage(), ::testing::KilledBySignal(SIGBUS), "");
}

// --- Permissions ---------------------------------------------------------------------------

void OpenAsNobody() {
  if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(5);
  absl::StatusOr<std::unique_ptr<Userfaultfd>> u = Userfaultfd::Open();
  std::fprintf(stderr, "%s\n", u.status().ToString().c_str());
  const bool good = absl::IsPermissionDenied(u.status()) &&
                    u.status().message().find("vm.unprivileged_userfaultfd=1") !=
                        absl::string_view::npos &&
                    u.status().message().find("/dev/userfaultfd") != absl::string_view::npos &&
                    u.status().message().find("CAP_SYS_PTRACE") != absl::string_view::npos;
  _exit(good ? 0 : 1);
}

TEST(UffdDeathTest, UnprivilegedOpenExplainsWhatToDo) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to drop to an unprivileged uid";
  std::ifstream f("/proc/sys/vm/unprivileged_userfaultfd");
  int v = -1;
  f >> v;
  if (v != 0) {
    GTEST_SKIP() << "vm.unprivileged_userfaultfd=" << v << ": unprivileged users may open it";
  }
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(OpenAsNobody(), ::testing::ExitedWithCode(0),
              "userfaultfd: permission denied: run as root");
}

}  // namespace
}  // namespace dsm
