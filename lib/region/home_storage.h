// HomeStorage: the authoritative copy of the pages a node is home for.
//
// An anonymous MAP_NORESERVE buffer the size of the region (the kernel allocates only pages
// that are written) plus two bitmaps: `loaded` (the buffer holds the page; otherwise it comes
// from the file, or is zero) and `dirty` (differs from the file; written by Persist()).
// File-backed regions read a page from the file on first use, so mapping a large file costs
// nothing up front. The buffer is never registered with userfaultfd: the engine thread may
// touch it freely.
//
// Thread safety: engine thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "protocol/message.h"

namespace dsm {

class HomeStorage {
 public:
  // `file_path` empty: anonymous (zero-filled, nothing to persist). Otherwise the file is
  // opened read-write (created if missing) and extended to `size` if shorter.
  static absl::StatusOr<std::unique_ptr<HomeStorage>> Create(const std::string& file_path,
                                                             size_t size);
  ~HomeStorage();
  HomeStorage(const HomeStorage&) = delete;
  HomeStorage& operator=(const HomeStorage&) = delete;

  absl::Status Load(PageIndex page, uint8_t* out);
  void Store(PageIndex page, const uint8_t* data);
  // Writes every dirty page to the file (runs of adjacent pages in one pwrite), then
  // fdatasync. No-op for anonymous storage.
  absl::Status Persist();

  bool file_backed() const { return fd_ >= 0; }
  uint64_t num_pages() const { return num_pages_; }

 private:
  HomeStorage() = default;
  bool Test(const uint64_t* bits, PageIndex p) const { return (bits[p / 64] >> (p % 64)) & 1; }
  void Set(uint64_t* bits, PageIndex p) { bits[p / 64] |= uint64_t{1} << (p % 64); }
  void Clear(uint64_t* bits, PageIndex p) { bits[p / 64] &= ~(uint64_t{1} << (p % 64)); }

  int fd_ = -1;
  std::string path_;
  uint64_t num_pages_ = 0;
  uint8_t* pages_ = nullptr;      // num_pages_ * kPageSize, MAP_NORESERVE
  uint64_t* loaded_ = nullptr;    // bitmap
  uint64_t* dirty_ = nullptr;     // bitmap
  size_t map_bytes_ = 0, bitmap_bytes_ = 0;
  uint64_t dirty_count_ = 0;
};

}  // namespace dsm
