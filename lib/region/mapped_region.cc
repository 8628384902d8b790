#include "region/mapped_region.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "coherence/refusal.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "region/eviction.h"

namespace dsm {

RegionId RegionIdFromName(const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a; the home also compares the name itself
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

MappedRegion::MappedRegion(const RegionOptions& options, NodeId self, size_t cluster_size,
                           RegionHost* host)
    : options_(options),
      self_(self),
      cluster_size_(cluster_size),
      host_(host),
      id_(RegionIdFromName(options.name)) {}

absl::StatusOr<std::unique_ptr<MappedRegion>> MappedRegion::Create(const RegionOptions& options,
                                                                   NodeId self,
                                                                   size_t cluster_size,
                                                                   RegionHost* host) {
  if (options.name.empty() || options.name.size() > 255) {
    return absl::InvalidArgumentError("RegionOptions.name must be 1..255 bytes");
  }
  if (options.size == 0) return absl::InvalidArgumentError("RegionOptions.size must be > 0");
  if (options.home >= cluster_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("RegionOptions.home = ", options.home, " but the cluster has ",
                     cluster_size, " nodes"));
  }
  if (options.home_policy == HomePolicy::kInterleaved && !options.file_path.empty()) {
    return absl::InvalidArgumentError("interleaved homes are for anonymous regions only");
  }
  std::unique_ptr<MappedRegion> r(new MappedRegion(options, self, cluster_size, host));
  r->num_pages_ = (options.size + kPageSize - 1) / kPageSize;
  r->size_ = r->num_pages_ * kPageSize;
  r->base_ = mmap(nullptr, r->size_, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r->base_ == MAP_FAILED) {
    r->base_ = nullptr;
    return absl::ResourceExhaustedError(
        absl::StrCat("mmap of ", r->size_, " bytes for region ", options.name, ": ", strerror(errno)));
  }
  // Transparent huge pages would install 2 MiB at a time behind the protocol's back.
  madvise(r->base_, r->size_, MADV_NOHUGEPAGE);
  absl::Status s = host->uffd().Register(r->base_, r->size_);
  if (!s.ok()) return s;
  r->registered_ = true;

  MappedRegion* raw = r.get();
  coherence::HomeFn home = [raw](PageIndex p) { return raw->HomeOf(p); };
  bool homes_any = options.home_policy == HomePolicy::kInterleaved || options.home == self;
  if (homes_any) {
    // Elsewhere file_path only declares the backing (compared in the open handshake).
    auto storage = HomeStorage::Create(options.file_path, r->size_);
    if (!storage.ok()) return storage.status();
    r->storage_ = std::move(*storage);
    r->directory_ = std::make_unique<coherence::Directory>(
        coherence::Directory::Config{self, r->id_, r->num_pages_, cluster_size, home}, raw);
  }
  r->cache_ = std::make_unique<coherence::Cache>(
      coherence::Cache::Config{self, r->id_, r->num_pages_, home, host->readahead_max_pages(),
                               host->TakeRequestIdRange()},
      raw);
  if (Evictor* ev = host->evictor()) {
    r->evictor_ = ev;
    r->space_ = ev->AddRegion(raw, self);
    r->batch_.protected_runs.reserve(64);
    r->batch_.zap_runs.reserve(64);
    r->batch_.sends.reserve(64);
  }
  return r;
}

MappedRegion::~MappedRegion() {
  FlushLost();  // no thread stays blocked on a page lost in the region's last event
  if (evictor_ != nullptr) evictor_->RemoveRegion(space_);
  if (base_ != nullptr) {
    if (registered_) {
      absl::Status s = host_->uffd().Unregister(base_, size_);
      if (!s.ok()) DSM_LOG(WARNING) << "unregister region " << options_.name << ": " << s;
    }
    munmap(base_, size_);
  }
}

NodeId MappedRegion::HomeOf(PageIndex page) const {
  if (options_.home_policy == HomePolicy::kInterleaved) {
    return static_cast<NodeId>(page % cluster_size_);
  }
  return options_.home;
}

std::vector<NodeId> MappedRegion::RemoteHomes() const {
  std::vector<NodeId> out;
  if (options_.home_policy == HomePolicy::kInterleaved) {
    for (NodeId n = 0; n < cluster_size_ && n < num_pages_; ++n) {
      if (n != self_) out.push_back(n);
    }
  } else if (options_.home != self_) {
    out.push_back(options_.home);
  }
  return out;
}

void MappedRegion::Send(Message&& m) {
  if (batch_.active) {
    batch_.sends.push_back(std::move(m));
    return;
  }
  host_->SendMessage(std::move(m));
}

absl::Status MappedRegion::Install(PageIndex page, const uint8_t* data,
                                   coherence::PageState state) {
  absl::Status s = host_->uffd().Copy(PageAddr(page), data, kPageSize,
                                      /*write_protect=*/state != coherence::PageState::kModified);
  if (s.ok()) {
    ++pages_installed_;
    if (evictor_ != nullptr) evictor_->replacer().OnInstall(space_, page);
    return s;
  }
  DSM_LOG(ERROR) << "region " << options_.name << " page " << page << ": install: " << s;
  if (!absl::IsAlreadyExists(s)) return s;
  // Mapped already: only the application itself could have done that (it must not touch the
  // mapping's layout); make the contents and access right rather than lose the grant.
  DSM_RETURN_IF_ERROR(host_->uffd().WriteProtect(PageAddr(page), kPageSize, false));
  std::memcpy(PageAddr(page), data, kPageSize);
  if (evictor_ != nullptr) evictor_->replacer().OnInstall(space_, page);
  DSM_RETURN_IF_ERROR(SetAccess(page, state));
  Wake(page);
  return absl::OkStatus();
}

absl::Status MappedRegion::SetAccess(PageIndex page, coherence::PageState state) {
  if (evictor_ != nullptr) evictor_->replacer().OnSetAccess(space_, page);
  if (batch_.active && state != coherence::PageState::kModified) {
    for (const Run& r : batch_.protected_runs) {
      if (page >= r.first && page - r.first < r.n) return absl::OkStatus();  // by ProtectRun
    }
  }
  absl::Status s = host_->uffd().WriteProtect(PageAddr(page), kPageSize,
                                              state != coherence::PageState::kModified);
  if (!s.ok()) DSM_LOG(ERROR) << "region " << options_.name << " page " << page << ": " << s;
  return s;
}

absl::Status MappedRegion::DowngradeRun(PageIndex first, uint64_t n) {
  DSM_RETURN_IF_ERROR(ProtectRun(first, n));  // the Cache falls back to page by page
  if (evictor_ != nullptr) {
    for (uint64_t i = 0; i < n; ++i) evictor_->replacer().OnSetAccess(space_, first + i);
  }
  return absl::OkStatus();
}

void MappedRegion::ReadPage(PageIndex page, uint8_t* out) {
  // The page is mapped (S or M, installed by us), so reading it cannot fault; for M the
  // protocol write-protected it first, so no store can race with the copy.
  std::memcpy(out, PageAddr(page), kPageSize);
}

absl::Status MappedRegion::Drop(PageIndex page) {
  if (evictor_ != nullptr) evictor_->replacer().OnDrop(space_, page);
  if (batch_.active) {  // EndBatch unmaps it, or poisons it if that fails
    if (!batch_.zap_runs.empty() &&
        batch_.zap_runs.back().first + batch_.zap_runs.back().n == page) {
      ++batch_.zap_runs.back().n;
    } else {
      batch_.zap_runs.push_back({page, 1});
    }
    return absl::OkStatus();
  }
  absl::Status s = host_->uffd().Zap(PageAddr(page), kPageSize);
  if (!s.ok()) DSM_LOG(ERROR) << "region " << options_.name << " page " << page << ": " << s;
  return s;
}

// The page is poisoned first (any access from now on raises SIGBUS, so the loss callback may
// touch it without deadlocking this thread), then the loss is reported, and only then are the
// blocked threads woken: a SIGBUS handler can rely on Stats / on_pages_lost having seen it.
// Reporting and waking wait for the end of the event (FlushLost), so pages lost together are
// reported as ranges.
void MappedRegion::Fail(PageIndex page, ErrorCode why) {
  Userfaultfd& uffd = host_->uffd();
  (void)uffd.Zap(PageAddr(page), kPageSize);
  absl::Status s = uffd.Poison(PageAddr(page), kPageSize, /*dont_wake=*/true);
  if (!s.ok()) {
    // Without UFFDIO_POISON (Linux < 6.6) the access cannot be made to raise SIGBUS; deny it
    // instead (SIGSEGV).
    if (mprotect(PageAddr(page), kPageSize, PROT_NONE) != 0) {
      DSM_LOG(ERROR) << "mprotect of lost page failed: " << strerror(errno);
    }
  }
  if (evictor_ != nullptr) evictor_->replacer().OnFail(space_, page);
  if (!lost_.empty() && why != lost_why_) FlushLost();
  if (lost_.empty()) host_->FlushLostSoon(id_);
  lost_why_ = why;
  AddPage(&lost_, page);
}

void MappedRegion::FlushLost() {
  if (lost_.empty()) return;
  std::vector<PageRange> ranges;
  ranges.swap(lost_);  // the callbacks below may fail further pages
  std::string cause;
  switch (lost_why_) {
    case ErrorCode::kPageLost:
    case ErrorCode::kPeerDown:
      cause = "the home or the only current copy is on a node that is down";
      break;
    default:
      cause = coherence::CodeToStatus(lost_why_, "the page could not be served").ToString();
      break;
  }
  LogLostRanges(absl::StrCat("region ", options_.name), ranges, [&](const PageRange& r) {
    // Name the home when the range has one (the usual cause: that node is down).
    const bool one_home = options_.home_policy == HomePolicy::kFixed || r.count == 1;
    return absl::StrCat(cause, one_home ? absl::StrCat(" (home: node ", HomeOf(r.first), ")")
                                        : std::string(),
                        "; accesses raise SIGBUS");
  });
  for (const PageRange& r : ranges) host_->ReportLost(options_.name, r.first, r.count);
  Userfaultfd& uffd = host_->uffd();
  for (const PageRange& r : ranges) {
    (void)uffd.Wake(PageAddr(r.first), r.count * kPageSize);  // no thread stays blocked
  }
}

void MappedRegion::Wake(PageIndex page) {
  absl::Status s = host_->uffd().Wake(PageAddr(page), kPageSize);
  if (!s.ok()) DSM_LOG(ERROR) << "region " << options_.name << " page " << page << ": " << s;
}

void MappedRegion::TakePageBuffer(std::vector<uint8_t>* out) {
  if (evictor_ != nullptr) {
    evictor_->TakePageBuffer(out);
  } else {
    out->resize(kPageSize);
  }
}

bool MappedRegion::ReservePrefetch(PageIndex page) {
  return evictor_ == nullptr || evictor_->replacer().ReservePrefetch(space_, page);
}

void MappedRegion::CancelPrefetch(PageIndex page) {
  if (evictor_ != nullptr) evictor_->replacer().CancelReservation(space_, page);
}

// One UFFDIO_COPY (read-only) for the whole run: a 64-page run costs one ioctl and one TLB
// flush instead of 64. UFFDIO_MOVE would avoid this copy (one of five per page on the scan
// path, docs/PERFORMANCE.md), but it needs page-aligned private anonymous source pages and
// the run arrives in the transport's receive buffer, decoded into a vector.
absl::Status MappedRegion::InstallRun(PageIndex first, uint64_t n, const uint8_t* data) {
  absl::Status s = host_->uffd().Copy(PageAddr(first), data, n * kPageSize,
                                      /*write_protect=*/true);
  if (!s.ok()) {
    // Part of the run may be mapped; the Cache installs page by page (Install repairs a page
    // that is already there).
    DSM_LOG(ERROR) << "region " << options_.name << " pages " << first << "+" << n
                   << ": install run: " << s;
    return s;
  }
  pages_installed_ += n;
  if (evictor_ != nullptr) {
    for (uint64_t i = 0; i < n; ++i) evictor_->replacer().OnInstall(space_, first + i);
  }
  return s;
}

absl::Status MappedRegion::ProtectRun(PageIndex first, uint64_t n) {
  if (first >= num_pages_ || n == 0) return absl::OkStatus();
  n = std::min<uint64_t>(n, num_pages_ - first);
  absl::Status s = host_->uffd().WriteProtect(PageAddr(first), n * kPageSize, true);
  if (!s.ok()) {
    DSM_LOG(ERROR) << "region " << options_.name << " pages " << first << "+" << n << ": " << s;
    return s;  // nothing recorded: SetAccess protects each page itself
  }
  if (batch_.active) batch_.protected_runs.push_back({first, n});
  return s;
}

absl::Status MappedRegion::UnprotectPage(PageIndex page) {
  absl::Status s = host_->uffd().WriteProtect(PageAddr(page), kPageSize, false);
  if (!s.ok()) DSM_LOG(ERROR) << "region " << options_.name << " page " << page << ": " << s;
  return s;
}

void MappedRegion::BeginBatch() {
  batch_.active = true;
  batch_.protected_runs.clear();
  batch_.zap_runs.clear();
  batch_.sends.clear();
}

void MappedRegion::EndBatch() {
  batch_.active = false;
  for (const Run& r : batch_.zap_runs) {
    absl::Status s = host_->uffd().Zap(PageAddr(r.first), r.n * kPageSize);
    if (!s.ok()) {
      // The Cache already counts these pages dropped; a copy that may still be mapped is
      // poisoned (lost here) before the messages reporting the drops go out.
      DSM_LOG(ERROR) << "region " << options_.name << " pages " << r.first << "+" << r.n << ": "
                     << s;
      for (uint64_t i = 0; i < r.n; ++i) cache_->LoseCopy(r.first + i);
    }
  }
  for (Message& m : batch_.sends) host_->SendMessage(std::move(m));
  batch_.protected_runs.clear();
  batch_.zap_runs.clear();
  batch_.sends.clear();
}

absl::Status MappedRegion::LoadPage(PageIndex page, uint8_t* out) {
  if (!storage_) return absl::FailedPreconditionError("not a home of this region");
  return storage_->Load(page, out);
}

absl::StatusOr<bool> MappedRegion::DowngradeLocal(PageIndex page, uint8_t* out) {
  return cache_->DowngradeForHome(page, out);
}

absl::StatusOr<bool> MappedRegion::InvalidateLocal(PageIndex page, coherence::PageState held,
                                                   uint8_t* out) {
  return cache_->InvalidateForHome(page, held, out);
}

absl::Status MappedRegion::StorePage(PageIndex page, const uint8_t* data) {
  if (!storage_) return absl::FailedPreconditionError("not a home of this region");
  if (page >= num_pages_) return absl::OutOfRangeError(absl::StrCat("page ", page));
  storage_->Store(page, data);
  return absl::OkStatus();
}

}  // namespace dsm
