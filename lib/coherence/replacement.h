// Replacer: keeps one node under its memory budget for cached remote pages. Pure logic: every
// effect goes through the Cache (Release) or a ReplacementPort, so the protocol simulator runs
// the same code as the engine.
//
// What counts against the budget: a page of a registered Cache that is mapped on this node
// (state S or M) and whose home is another node. Pages homed here are not counted (the home's
// own mapping is refetched without the network, and its storage is the home's business), nor
// is anything outside the regions. A page with a request in flight from I is *reserved*: the
// fault path makes room for it before its data arrives, so an install never overshoots.
//
// Policy: CLOCK (second chance) over resident pages in address order, one hand across all
// regions. The "referenced" bit is set by every fault on the page (install, upgrade, a
// coalesced or stale fault) and refreshed by write sampling: when the hand gives a Modified
// page its second chance it also write-protects it ("arms" it); the next store faults, the
// fault is absorbed here (protection removed, page marked referenced) and never reaches the
// Cache. Reads of resident pages are invisible (no accessed bits, and unmapping a clean page to
// sample it would cost a refetch from the home), so a page that is only read survives one
// revolution of the hand after its last fault. Victims in address order form runs, which the
// port unmaps with one madvise each.
//
// Thread safety: not thread-safe; the engine thread owns it (like the Caches it drives).
//
// Invariants:
//  - resident(s, p) <=> p's home is not this node and the port has Install'ed p and not
//    Drop'ed or Fail'ed it since (the hooks below are called by the CachePort).
//  - reserved(s, p) => p is I and its Cache has a request pending for it.
//  - armed(s, p) => resident and the Cache holds p M and the port write-protected it for
//    sampling; any other change of p's access (SetAccess, Drop) disarms it first.
//  - Enforce() never releases a pending or lost page (Cache::Release refuses them), and a
//    Modified page is released only by writing it back (Cache::Release).
//  - After Enforce(): resident + reserved <= budget, unless every resident page is
//    unevictable (pending, or Modified with its home down).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "coherence/cache.h"
#include "coherence/types.h"

namespace dsm::coherence {

// What a failed port call means:
//  - Protect fails before a batch of write-backs: nothing is lost; Cache::Release then
//    write-protects each Modified victim itself (and keeps it if that fails too).
//  - Protect fails for sampling: the run is not armed (its armed bits are cleared), so the
//    pages look unreferenced to the hand until their next fault.
//  - Unprotect fails: the writer cannot be let through while the page stays Modified here, so
//    the page is released (Cache::Release: written back and dropped) and the fault is served
//    as a write miss (the writer is woken when the page is installed again); if it cannot be
//    released it is lost here (Cache::LoseCopy: the writer gets SIGBUS).
class ReplacementPort {
 public:
  // Write-protects the mapped pages [first, first + n) of `space` (sampling, or before a
  // batch of write-backs so each page needs no ioctl of its own). On error none of them may
  // be assumed protected.
  virtual absl::Status Protect(int space, PageIndex first, uint64_t n) = 0;
  // Removes sampling protection from one Modified page and wakes threads blocked on it. On
  // error the page stays write-protected.
  virtual absl::Status Unprotect(int space, PageIndex page) = 0;
  // Bracket a batch of Cache::Release calls on one space. The port may defer unmaps until
  // EndBatch (unmapping runs together); if it does, it must defer the messages the Cache
  // sends in between until after them (a node unmaps before it reports the drop).
  virtual void BeginBatch(int space) = 0;
  virtual void EndBatch(int space) = 0;

 protected:
  ~ReplacementPort() = default;
};

class Replacer {
 public:
  struct Config {
    NodeId self = 0;
    uint64_t budget_pages = 0;  // 0 = unlimited (pages are still tracked)
    bool sample_writes = true;  // arm Modified pages on their second chance
    uint64_t max_batch = 64;    // evict at most this many pages below the budget at once
  };
  struct Counters {
    uint64_t evictions = 0;             // pages released to stay within the budget
    uint64_t eviction_writebacks = 0;   // of which Modified (written back)
    uint64_t eviction_batches = 0;      // Enforce() calls that released something
    uint64_t sample_faults = 0;         // write faults absorbed by write sampling
    uint64_t pages_armed = 0;           // second chances given with write protection
    uint64_t scanned = 0;               // resident pages the hand passed
    uint64_t over_budget = 0;           // Enforce() calls that could not reach the budget
    uint64_t port_failures = 0;         // Protect / Unprotect calls that failed
  };

  Replacer(Config config, ReplacementPort* port);
  ~Replacer();
  Replacer(const Replacer&) = delete;
  Replacer& operator=(const Replacer&) = delete;

  // Registers a region's Cache (it must outlive the registration). Returns its space id.
  int AddSpace(Cache* cache, HomeFn home);
  // Forgets a space (its pages stop counting). The id may be reused.
  void RemoveSpace(int space);

  // CachePort hooks, called by the port of `space` after the effect:
  void OnInstall(int space, PageIndex page);       // mapped (S or M): resident, referenced
  void OnDrop(int space, PageIndex page);          // unmapped
  void OnSetAccess(int space, PageIndex page);     // access changed by the Cache: disarmed
  void OnFail(int space, PageIndex page);          // lost: neither resident nor reserved

  // The fault path: a fault on `page` reported by the kernel. Absorbs a write to an armed
  // page; otherwise marks the page referenced, hands the fault to the Cache and reserves
  // room if a request from I went out. Call Enforce() after a batch of faults.
  void OnFault(int space, PageIndex page, bool write, absl::Time now);
  // Readahead (the Cache's CachePort::ReservePrefetch): reserves room for a speculative
  // request for `page` (I, about to be requested) and returns true, or returns false when the
  // budget has no room for it beside the demand fault being served (resident + reserved + 1
  // >= budget). Speculation never makes room by evicting. Pages homed here need no room.
  bool ReservePrefetch(int space, PageIndex page);
  // Returns the reservation of a speculative request that ended without a grant (the page
  // is I and no longer pending).
  void CancelReservation(int space, PageIndex page);

  // Releases pages until resident + reserved <= budget - batch slack (when over the budget).
  // Returns the number of pages released.
  size_t Enforce();

  uint64_t budget_pages() const { return cfg_.budget_pages; }
  uint64_t resident() const { return resident_; }
  uint64_t reserved() const { return reserved_; }
  bool is_resident(int space, PageIndex page) const;
  bool is_armed(int space, PageIndex page) const;
  const Counters& counters() const { return c_; }

  // The replacer's own memory (for mlock): fn(addr, bytes) for its fixed scratch arrays, and
  // for the bitmaps of one space.
  template <typename Fn>
  void ForEachScratch(Fn&& fn) const;
  template <typename Fn>
  void ForEachTable(int space, Fn&& fn) const;

 private:
  struct Space {
    Cache* cache = nullptr;
    HomeFn home;
    uint64_t num_pages = 0;
    LazyArray<uint64_t> resident, referenced, armed, reserved;  // one bit per page
    explicit Space(uint64_t n)
        : num_pages(n), resident(Words(n)), referenced(Words(n)), armed(Words(n)),
          reserved(Words(n)) {}
    static size_t Words(uint64_t n) { return (n + 63) / 64; }
  };
  Space* Get(int space) const;
  bool Remote(const Space& s, PageIndex page) const;
  // Moves the hand to the next resident page (wrapping across spaces). False if none.
  bool Advance(int* space, PageIndex* page);

  Config cfg_;
  ReplacementPort* port_;
  std::vector<std::unique_ptr<Space>> spaces_;
  int hand_space_ = 0;
  PageIndex hand_page_ = 0;
  uint64_t resident_ = 0;
  uint64_t reserved_ = 0;
  Counters c_;
  // Scratch, reserved up front so Enforce() does not allocate.
  struct Pick {
    int space;
    PageIndex page;
  };
  std::vector<Pick> victims_, arm_;

};

template <typename Fn>
void Replacer::ForEachScratch(Fn&& fn) const {
  fn(static_cast<const void*>(victims_.data()), victims_.capacity() * sizeof(Pick));
  fn(static_cast<const void*>(arm_.data()), arm_.capacity() * sizeof(Pick));
}

template <typename Fn>
void Replacer::ForEachTable(int space, Fn&& fn) const {
  const Space* s = Get(space);
  if (s == nullptr) return;
  const size_t bytes = Space::Words(s->num_pages) * sizeof(uint64_t);
  fn(static_cast<const void*>(&s->resident[0]), bytes);
  fn(static_cast<const void*>(&s->referenced[0]), bytes);
  fn(static_cast<const void*>(&s->armed[0]), bytes);
  fn(static_cast<const void*>(&s->reserved[0]), bytes);
}

}  // namespace dsm::coherence
