// Unmapping at the home while other nodes hold pages Modified: the home reclaims them through
// the protocol's recalls before it persists, so its file has every node's last writes.
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cluster_fixture.h"
#include "gtest/gtest.h"
#include "node_test_util.h"

namespace dsm::testing {
namespace {

constexpr int kPages = 8;

std::string TempFile() {
  std::string path = absl::StrCat(::testing::TempDir(), "dsm-unmap-XXXXXX");
  int fd = mkstemp(path.data());
  if (fd >= 0) close(fd);
  return path;
}

std::vector<uint8_t> ReadFile(const std::string& path, size_t n) {
  std::vector<uint8_t> out(n, 0);
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return {};
  ssize_t got = pread(fd, out.data(), n, 0);
  close(fd);
  if (got != static_cast<ssize_t>(n)) return {};
  return out;
}

class UnmapAtHome : public ::testing::TestWithParam<TransportKind> {};

TEST_P(UnmapAtHome, ReclaimsPagesModifiedElsewhereBeforeItPersists) {
  absl::StatusOr<std::unique_ptr<LocalCluster>> c = LocalCluster::Start(GetParam(), 3, nullptr);
  if (!c.ok() && c.status().code() == absl::StatusCode::kPermissionDenied && geteuid() != 0) {
    GTEST_SKIP() << "userfaultfd unavailable to this user: " << c.status();
  }
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string path = TempFile();
  RegionOptions ro;
  ro.name = "unmap-at-home";
  ro.size = kPages * kPage;
  ro.home = 0;
  ro.file_path = path;
  absl::StatusOr<std::vector<std::unique_ptr<Region>>> regions = (*c)->MapAll(ro);
  ASSERT_TRUE(regions.ok()) << regions.status();
  // Node 1 writes the even pages, node 2 the odd ones: each holds its pages Modified.
  for (int p = 0; p < kPages; ++p) {
    Region& r = *(*regions)[p % 2 == 0 ? 1 : 2];
    FillPattern(static_cast<uint8_t*>(r.data()) + p * kPage, kPage, /*seed=*/p, 0);
  }
  ASSERT_TRUE((*regions)[0]->Unmap().ok());
  const std::vector<uint8_t> file = ReadFile(path, kPages * kPage);
  ASSERT_EQ(file.size(), kPages * kPage);
  for (int p = 0; p < kPages; ++p) {
    std::optional<std::string> bad = CheckPattern(file.data() + p * kPage, kPage, p, 0);
    EXPECT_FALSE(bad.has_value()) << "page " << p << ": " << *bad;
  }
  // The writers were downgraded, not robbed: they still read what they wrote.
  for (int p = 0; p < kPages; ++p) {
    Region& r = *(*regions)[p % 2 == 0 ? 1 : 2];
    std::optional<std::string> bad =
        CheckPattern(static_cast<uint8_t*>(r.data()) + p * kPage, kPage, p, 0);
    EXPECT_FALSE(bad.has_value()) << "page " << p << ": " << *bad;
  }
  (*regions)[1].reset();  // their unmaps find no home any more; what matters was checked
  (*regions)[2].reset();
  std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Transports, UnmapAtHome,
                         ::testing::Values(TransportKind::kLoopback, TransportKind::kTcp),
                         [](const auto& p) {
                           return p.param == TransportKind::kTcp ? "Tcp" : "Loopback";
                         });

}  // namespace
}  // namespace dsm::testing
