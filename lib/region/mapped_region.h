// MappedRegion: one region as the engine sees it. It owns the application's mapping
// (anonymous memory registered with userfaultfd), the requester-side Cache, and, on a node
// that is home for some of its pages, the Directory and the HomeStorage. It carries out the
// protocol's effects: it is the CachePort (UFFDIO_COPY / WRITEPROTECT / POISON, MADV_DONTNEED
// on the mapping) and the DirectoryPort (home storage) of its state machines.
//
// Thread safety: engine thread only, except data()/size() which are immutable.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coherence/cache.h"
#include "coherence/directory.h"
#include "common/page_ranges.h"
#include "dsm/options.h"
#include "fault/userfaultfd.h"
#include "region/home_storage.h"

namespace dsm {

class Evictor;  // region/eviction.h

// What a region needs from the node that maps it.
class RegionHost {
 public:
  virtual void SendMessage(Message&& m) = 0;  // m.dst set; never re-entrant
  virtual Userfaultfd& uffd() = 0;
  // Pages of `region` that became unreachable (already poisoned).
  virtual void ReportLost(const std::string& region, PageIndex first, uint64_t count) = 0;
  // Calls FlushLost() on the region `id` (if still mapped) after the current event.
  virtual void FlushLostSoon(RegionId id) = 0;
  // The node's memory budget, if it keeps one: regions register with it and report every
  // change of their mappings to it.
  virtual Evictor* evictor() { return nullptr; }
  // Options::readahead_max_pages (0: no readahead).
  virtual size_t readahead_max_pages() const { return 0; }
  // The first request id of a new mapping: each mapping gets its own range (Cache::Config).
  virtual uint64_t TakeRequestIdRange() { return 1; }

 protected:
  ~RegionHost() = default;
};

RegionId RegionIdFromName(const std::string& name);

class MappedRegion final : public coherence::CachePort, public coherence::DirectoryPort {
 public:
  // Maps and registers the memory; creates home storage when this node homes any page.
  static absl::StatusOr<std::unique_ptr<MappedRegion>> Create(const RegionOptions& options,
                                                              NodeId self, size_t cluster_size,
                                                              RegionHost* host);
  ~MappedRegion();  // unregisters and unmaps
  MappedRegion(const MappedRegion&) = delete;
  MappedRegion& operator=(const MappedRegion&) = delete;

  RegionId id() const { return id_; }
  const std::string& name() const { return options_.name; }
  const RegionOptions& options() const { return options_; }
  void* data() const { return base_; }
  size_t size() const { return size_; }
  uint64_t num_pages() const { return num_pages_; }
  NodeId HomeOf(PageIndex page) const;
  // Every node other than this one that is home for some page.
  std::vector<NodeId> RemoteHomes() const;
  bool Contains(uintptr_t addr) const {
    return addr >= reinterpret_cast<uintptr_t>(base_) &&
           addr < reinterpret_cast<uintptr_t>(base_) + size_;
  }
  PageIndex PageOf(uintptr_t addr) const {
    return (addr - reinterpret_cast<uintptr_t>(base_)) / kPageSize;
  }

  coherence::Cache& cache() { return *cache_; }
  coherence::Directory* directory() { return directory_.get(); }
  HomeStorage* storage() { return storage_.get(); }

  // CachePort.
  void Send(Message&& m) override;
  absl::Status Install(PageIndex page, const uint8_t* data,
                       coherence::PageState state) override;
  absl::Status SetAccess(PageIndex page, coherence::PageState state) override;
  absl::Status DowngradeRun(PageIndex first, uint64_t n) override;
  void ReadPage(PageIndex page, uint8_t* out) override;
  absl::Status Drop(PageIndex page) override;
  void Fail(PageIndex page, ErrorCode why) override;
  void Wake(PageIndex page) override;
  void TakePageBuffer(std::vector<uint8_t>* out) override;
  bool ReservePrefetch(PageIndex page) override;
  void CancelPrefetch(PageIndex page) override;
  absl::Status InstallRun(PageIndex first, uint64_t n, const uint8_t* data) override;
  // DirectoryPort.
  absl::Status LoadPage(PageIndex page, uint8_t* out) override;
  absl::Status StorePage(PageIndex page, const uint8_t* data) override;
  absl::StatusOr<bool> DowngradeLocal(PageIndex page, uint8_t* out) override;
  absl::StatusOr<bool> InvalidateLocal(PageIndex page, coherence::PageState held,
                                       uint8_t* out) override;

  uint64_t pages_installed() const { return pages_installed_; }

  // Reports the pages Fail() poisoned since the last flush, as ranges (one log line and one
  // on_pages_lost call per contiguous range), then wakes the threads blocked on them. Fail
  // schedules it (RegionHost::FlushLostSoon); the destructor runs it for what is left.
  void FlushLost();

  // Eviction (driven by the Evictor). The region's space id in the node's Replacer (-1: none).
  int space() const { return space_; }
  // Write-protects [first, first + n) in one ioctl. Inside a batch, SetAccess(S) on these
  // pages then skips its own ioctl.
  // On error nothing is recorded (SetAccess then protects page by page).
  absl::Status ProtectRun(PageIndex first, uint64_t n);
  // Removes sampling protection from one Modified page (wakes its waiters). On error the
  // page stays write-protected (ReplacementPort says what then happens).
  absl::Status UnprotectPage(PageIndex page);
  // Between BeginBatch and EndBatch, Drop only records the page and Send queues the message;
  // EndBatch unmaps the recorded pages in runs (one madvise each), then sends the messages in
  // order, so every unmap still precedes the message that reports it. A run whose unmap
  // fails is poisoned (Cache::LoseCopy) before the messages go out.
  void BeginBatch();
  void EndBatch();

 private:
  MappedRegion(const RegionOptions& options, NodeId self, size_t cluster_size, RegionHost* host);
  uint8_t* PageAddr(PageIndex page) const { return static_cast<uint8_t*>(base_) + page * kPageSize; }

  const RegionOptions options_;
  const NodeId self_;
  const size_t cluster_size_;
  RegionHost* const host_;
  const RegionId id_;
  size_t size_ = 0;
  uint64_t num_pages_ = 0;
  void* base_ = nullptr;
  bool registered_ = false;
  std::unique_ptr<HomeStorage> storage_;
  std::unique_ptr<coherence::Cache> cache_;
  std::unique_ptr<coherence::Directory> directory_;
  uint64_t pages_installed_ = 0;
  // Pages failed and poisoned but not reported yet (all for `lost_why_`); see FlushLost.
  std::vector<PageRange> lost_;
  ErrorCode lost_why_ = ErrorCode::kOk;
  Evictor* evictor_ = nullptr;
  int space_ = -1;
  struct Run {
    PageIndex first;
    uint64_t n;
  };
  struct Batch {
    bool active = false;
    std::vector<Run> protected_runs, zap_runs;  // capacity kept across batches
    std::vector<Message> sends;
  } batch_;
};

}  // namespace dsm
