#include "region/home_storage.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace dsm {
namespace {

void* MapAnonymous(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HomeStorage>> HomeStorage::Create(const std::string& file_path,
                                                                  size_t size) {
  std::unique_ptr<HomeStorage> s(new HomeStorage());
  s->num_pages_ = (size + kPageSize - 1) / kPageSize;
  s->map_bytes_ = s->num_pages_ * kPageSize;
  s->bitmap_bytes_ = ((s->num_pages_ + 63) / 64) * 8;
  s->pages_ = static_cast<uint8_t*>(MapAnonymous(s->map_bytes_));
  s->loaded_ = static_cast<uint64_t*>(MapAnonymous(s->bitmap_bytes_));
  s->dirty_ = static_cast<uint64_t*>(MapAnonymous(s->bitmap_bytes_));
  if (!s->pages_ || !s->loaded_ || !s->dirty_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("home storage: mmap of ", s->map_bytes_, " bytes failed: ", strerror(errno)));
  }
  if (!file_path.empty()) {
    s->path_ = file_path;
    s->fd_ = open(file_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->fd_ < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", file_path));
    struct stat st;
    if (fstat(s->fd_, &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("fstat ", file_path));
    if (!S_ISREG(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat(file_path, " is not a regular file"));
    }
    if (static_cast<uint64_t>(st.st_size) < size && ftruncate(s->fd_, size) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("ftruncate ", file_path));
    }
  }
  return s;
}

HomeStorage::~HomeStorage() {
  if (pages_) munmap(pages_, map_bytes_);
  if (loaded_) munmap(loaded_, bitmap_bytes_);
  if (dirty_) munmap(dirty_, bitmap_bytes_);
  if (fd_ >= 0) close(fd_);
}

absl::Status HomeStorage::Load(PageIndex page, uint8_t* out) {
  if (page >= num_pages_) return absl::OutOfRangeError("page beyond the region");
  uint8_t* slot = pages_ + page * kPageSize;
  if (!Test(loaded_, page) && fd_ < 0) {
    // Never stored: zero. Reading the slot would fault in the zero page and a page table for
    // nothing (a scan of a fresh region paid one fault per page here).
    std::memset(out, 0, kPageSize);
    return absl::OkStatus();
  }
  if (!Test(loaded_, page) && fd_ >= 0) {
    size_t done = 0;
    while (done < kPageSize) {
      ssize_t n = pread(fd_, slot + done, kPageSize - done, page * kPageSize + done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return absl::ErrnoToStatus(errno, absl::StrCat("pread ", path_));
      }
      if (n == 0) break;  // past EOF: the rest stays zero
      done += n;
    }
    Set(loaded_, page);
  }
  std::memcpy(out, slot, kPageSize);
  return absl::OkStatus();
}

void HomeStorage::Store(PageIndex page, const uint8_t* data) {
  if (page >= num_pages_) return;
  std::memcpy(pages_ + page * kPageSize, data, kPageSize);
  Set(loaded_, page);
  if (fd_ >= 0 && !Test(dirty_, page)) {
    Set(dirty_, page);
    ++dirty_count_;
  }
}

absl::Status HomeStorage::Persist() {
  if (fd_ < 0) return absl::OkStatus();
  PageIndex p = 0;
  while (p < num_pages_ && dirty_count_ > 0) {
    if (p % 64 == 0 && dirty_[p / 64] == 0) {  // skip clean words quickly
      p += 64;
      continue;
    }
    if (!Test(dirty_, p)) {
      ++p;
      continue;
    }
    PageIndex end = p + 1;  // one pwrite per run of adjacent dirty pages
    while (end < num_pages_ && Test(dirty_, end)) ++end;
    const size_t bytes = (end - p) * kPageSize;
    size_t done = 0;
    while (done < bytes) {
      ssize_t n = pwrite(fd_, pages_ + p * kPageSize + done, bytes - done, p * kPageSize + done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return absl::ErrnoToStatus(errno, absl::StrCat("pwrite ", path_));
      }
      done += n;
    }
    for (PageIndex q = p; q < end; ++q) Clear(dirty_, q);
    dirty_count_ -= end - p;
    p = end;
  }
  if (fdatasync(fd_) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("fdatasync ", path_));
  return absl::OkStatus();
}

}  // namespace dsm
