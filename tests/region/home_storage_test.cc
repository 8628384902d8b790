#include "region/home_storage.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace dsm {
namespace {

std::string TempPath(const char* tag) {
  return std::string("/tmp/dsm_home_storage_") + tag + "_" + std::to_string(getpid());
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::vector<uint8_t> out;
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return out;
  uint8_t buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) out.insert(out.end(), buf, buf + n);
  close(fd);
  return out;
}

TEST(HomeStorage, AnonymousPagesStartZeroAndKeepWhatIsStored) {
  auto s = HomeStorage::Create("", 3 * kPageSize + 1);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->num_pages(), 4u);
  std::vector<uint8_t> page(kPageSize, 0xff), data(kPageSize, 0x5a);
  ASSERT_TRUE((*s)->Load(3, page.data()).ok());
  EXPECT_EQ(page, std::vector<uint8_t>(kPageSize, 0));
  (*s)->Store(3, data.data());
  ASSERT_TRUE((*s)->Load(3, page.data()).ok());
  EXPECT_EQ(page, data);
  EXPECT_TRUE((*s)->Persist().ok());
  EXPECT_FALSE((*s)->Load(4, page.data()).ok());
}

TEST(HomeStorage, FileIsExtendedReadLazilyAndPersistedInRuns) {
  const std::string path = TempPath("file");
  {
    int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
    ASSERT_GE(fd, 0);
    std::string head = "hello from the file";
    ASSERT_EQ(write(fd, head.data(), head.size()), static_cast<ssize_t>(head.size()));
    close(fd);
  }
  auto s = HomeStorage::Create(path, 200 * kPageSize);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(ReadFile(path).size(), 200 * kPageSize);
  std::vector<uint8_t> page(kPageSize);
  ASSERT_TRUE((*s)->Load(0, page.data()).ok());
  EXPECT_EQ(std::string(reinterpret_cast<char*>(page.data())), "hello from the file");
  // Dirty pages spanning a bitmap word boundary (63, 64, 65) and isolated ones.
  for (PageIndex p : {PageIndex{1}, PageIndex{63}, PageIndex{64}, PageIndex{65}, PageIndex{199}}) {
    std::vector<uint8_t> d(kPageSize, static_cast<uint8_t>(p));
    (*s)->Store(p, d.data());
  }
  ASSERT_TRUE((*s)->Persist().ok());
  std::vector<uint8_t> file = ReadFile(path);
  ASSERT_EQ(file.size(), 200 * kPageSize);
  for (PageIndex p = 0; p < 200; ++p) {
    uint8_t want = (p == 1 || p == 63 || p == 64 || p == 65 || p == 199) ? static_cast<uint8_t>(p) : 0;
    size_t start = p == 0 ? 64 : 0;  // page 0 holds the original text
    for (size_t i = start; i < kPageSize; i += 512) {
      ASSERT_EQ(file[p * kPageSize + i], want) << "page " << p << " byte " << i;
    }
  }
  unlink(path.c_str());
}

TEST(HomeStorage, RejectsADirectory) {
  auto s = HomeStorage::Create("/tmp", kPageSize);
  EXPECT_FALSE(s.ok());
}

}  // namespace
}  // namespace dsm
