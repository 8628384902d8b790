#include "coherence/replacement.h"

#include <algorithm>
#include <utility>

namespace dsm::coherence {
namespace {

bool Test(const LazyArray<uint64_t>& a, PageIndex p) { return (a[p / 64] >> (p % 64)) & 1; }
void Set(LazyArray<uint64_t>& a, PageIndex p) { a[p / 64] |= uint64_t{1} << (p % 64); }
void Clear(LazyArray<uint64_t>& a, PageIndex p) {
  // Reading first keeps untouched words on the shared zero page.
  if (Test(a, p)) a[p / 64] &= ~(uint64_t{1} << (p % 64));
}
// Sets the bit; true if it was clear.
bool TestAndSet(LazyArray<uint64_t>& a, PageIndex p) {
  if (Test(a, p)) return false;
  Set(a, p);
  return true;
}
bool TestAndClear(LazyArray<uint64_t>& a, PageIndex p) {
  if (!Test(a, p)) return false;
  a[p / 64] &= ~(uint64_t{1} << (p % 64));
  return true;
}

}  // namespace

Replacer::Replacer(Config config, ReplacementPort* port) : cfg_(config), port_(port) {
  if (cfg_.max_batch == 0) cfg_.max_batch = 1;
  victims_.reserve(cfg_.max_batch);
  arm_.reserve(cfg_.max_batch * 4);
}

Replacer::~Replacer() = default;

int Replacer::AddSpace(Cache* cache, HomeFn home) {
  auto s = std::make_unique<Space>(cache->num_pages());
  s->cache = cache;
  s->home = std::move(home);
  for (size_t i = 0; i < spaces_.size(); ++i) {
    if (!spaces_[i]) {
      spaces_[i] = std::move(s);
      return static_cast<int>(i);
    }
  }
  spaces_.push_back(std::move(s));
  return static_cast<int>(spaces_.size() - 1);
}

void Replacer::RemoveSpace(int space) {
  Space* s = Get(space);
  if (s == nullptr) return;
  for (size_t w = 0; w < Space::Words(s->num_pages); ++w) {
    resident_ -= static_cast<uint64_t>(__builtin_popcountll(s->resident[w]));
    reserved_ -= static_cast<uint64_t>(__builtin_popcountll(s->reserved[w]));
  }
  spaces_[static_cast<size_t>(space)].reset();
  if (hand_space_ == space) hand_page_ = 0;
}

Replacer::Space* Replacer::Get(int space) const {
  if (space < 0 || static_cast<size_t>(space) >= spaces_.size()) return nullptr;
  return spaces_[static_cast<size_t>(space)].get();
}

bool Replacer::Remote(const Space& s, PageIndex page) const {
  return page < s.num_pages && s.home(page) != cfg_.self;
}

bool Replacer::is_resident(int space, PageIndex page) const {
  const Space* s = Get(space);
  return s != nullptr && page < s->num_pages && Test(s->resident, page);
}

bool Replacer::is_armed(int space, PageIndex page) const {
  const Space* s = Get(space);
  return s != nullptr && page < s->num_pages && Test(s->armed, page);
}

void Replacer::OnInstall(int space, PageIndex page) {
  Space* s = Get(space);
  if (s == nullptr || !Remote(*s, page)) return;
  if (TestAndClear(s->reserved, page)) --reserved_;
  if (TestAndSet(s->resident, page)) ++resident_;
  Set(s->referenced, page);
  Clear(s->armed, page);
}

void Replacer::OnDrop(int space, PageIndex page) {
  Space* s = Get(space);
  if (s == nullptr || !Remote(*s, page)) return;
  if (TestAndClear(s->resident, page)) --resident_;
  Clear(s->armed, page);
  Clear(s->referenced, page);
  // An upgrade that lost its S copy (invalidated meanwhile) will be answered with data.
  if (s->cache->pending(page) && TestAndSet(s->reserved, page)) ++reserved_;
}

void Replacer::OnSetAccess(int space, PageIndex page) {
  Space* s = Get(space);
  if (s == nullptr || page >= s->num_pages) return;
  Clear(s->armed, page);
}

void Replacer::OnFail(int space, PageIndex page) {
  Space* s = Get(space);
  if (s == nullptr || !Remote(*s, page)) return;
  if (TestAndClear(s->resident, page)) --resident_;
  if (TestAndClear(s->reserved, page)) --reserved_;
  Clear(s->armed, page);
}

void Replacer::OnFault(int space, PageIndex page, bool write, absl::Time now) {
  Space* s = Get(space);
  if (s == nullptr) return;
  Cache& cache = *s->cache;
  if (page >= s->num_pages || !Remote(*s, page)) {
    cache.OnFault(page, write, now);  // out of range: the Cache reports it
    return;
  }
  if (write && TestAndClear(s->armed, page)) {
    // A store to a page protected only for sampling: it is in use. The Cache never hears.
    ++c_.sample_faults;
    Set(s->referenced, page);
    if (port_->Unprotect(space, page).ok()) return;
    // The writer cannot be let through: release the page and serve the fault as a write
    // miss below (the writer is woken by the install), or lose the page (SIGBUS).
    ++c_.port_failures;
    if (!cache.Release(page)) {
      cache.LoseCopy(page);
      return;
    }
  }
  if (Test(s->resident, page)) Set(s->referenced, page);
  const bool was_pending = cache.pending(page);
  cache.OnFault(page, write, now);
  if (!was_pending && cache.pending(page) && cache.state(page) == PageState::kInvalid &&
      TestAndSet(s->reserved, page)) {
    ++reserved_;
  }
}

bool Replacer::ReservePrefetch(int space, PageIndex page) {
  Space* s = Get(space);
  if (s == nullptr || page >= s->num_pages) return false;
  if (!Remote(*s, page)) return true;
  if (cfg_.budget_pages != 0 && resident_ + reserved_ + 1 >= cfg_.budget_pages) return false;
  if (TestAndSet(s->reserved, page)) ++reserved_;
  return true;
}

void Replacer::CancelReservation(int space, PageIndex page) {
  Space* s = Get(space);
  if (s == nullptr || page >= s->num_pages || s->cache->pending(page)) return;
  if (TestAndClear(s->reserved, page)) --reserved_;
}

bool Replacer::Advance(int* space, PageIndex* page) {
  const int n = static_cast<int>(spaces_.size());
  if (n == 0 || resident_ == 0) return false;
  if (hand_space_ >= n) hand_space_ = 0, hand_page_ = 0;
  // Visit each space from the hand on, wrapping once through the hand's own space.
  for (int step = 0; step <= n; ++step) {
    const int si = (hand_space_ + step) % n;
    Space* s = spaces_[static_cast<size_t>(si)].get();
    const PageIndex from = step == 0 ? hand_page_ : 0;
    if (s != nullptr && from < s->num_pages) {
      const size_t words = Space::Words(s->num_pages);
      size_t w = from / 64;
      uint64_t bits = s->resident[w] & (~uint64_t{0} << (from % 64));
      while (bits == 0 && ++w < words) bits = s->resident[w];
      if (bits != 0) {
        const PageIndex p = w * 64 + static_cast<PageIndex>(__builtin_ctzll(bits));
        *space = si;
        *page = p;
        hand_space_ = si;
        hand_page_ = p + 1;
        return true;
      }
    }
    hand_page_ = 0;
  }
  return false;
}

size_t Replacer::Enforce() {
  if (cfg_.budget_pages == 0 || resident_ + reserved_ <= cfg_.budget_pages) return 0;
  const uint64_t slack = std::min<uint64_t>(cfg_.max_batch,
                                            std::max<uint64_t>(1, cfg_.budget_pages / 8));
  const uint64_t target = cfg_.budget_pages > slack ? cfg_.budget_pages - slack : 0;
  size_t released = 0;
  while (resident_ + reserved_ > target && resident_ > 0) {
    const uint64_t want =
        std::min<uint64_t>(cfg_.max_batch, resident_ + reserved_ - target);
    victims_.clear();
    arm_.clear();
    // Two revolutions at most: the first may only clear referenced bits.
    const uint64_t limit = 2 * resident_ + 1;
    int sp = 0;
    PageIndex pg = 0;
    for (uint64_t visits = 0; victims_.size() < want && visits < limit; ++visits) {
      if (!Advance(&sp, &pg)) break;
      ++c_.scanned;
      Space& s = *spaces_[static_cast<size_t>(sp)];
      // Pending pages, lost ones and M pages whose home is down cannot go: not sampled,
      // never victims.
      const bool can = s.cache->CanRelease(pg);
      if (TestAndClear(s.referenced, pg)) {
        if (can && cfg_.sample_writes && arm_.size() < arm_.capacity() && !Test(s.armed, pg) &&
            s.cache->state(pg) == PageState::kModified) {
          arm_.push_back({sp, pg});
        }
        continue;
      }
      if (can) victims_.push_back({sp, pg});
    }
    auto by_addr = [](const Pick& a, const Pick& b) {
      return a.space != b.space ? a.space < b.space : a.page < b.page;
    };
    auto same = [](const Pick& a, const Pick& b) { return a.space == b.space && a.page == b.page; };
    // A full wrap can pick a page twice.
    std::sort(victims_.begin(), victims_.end(), by_addr);
    victims_.erase(std::unique(victims_.begin(), victims_.end(), same), victims_.end());
    size_t round = 0;
    for (size_t i = 0; i < victims_.size();) {
      const int space = victims_[i].space;
      size_t end = i;
      while (end < victims_.size() && victims_[end].space == space) ++end;
      Space& s = *spaces_[static_cast<size_t>(space)];
      port_->BeginBatch(space);
      // Write-protect runs holding a Modified page at once: Release then needs no ioctl per
      // page to stop stores before it copies the page.
      for (size_t a = i; a < end;) {
        size_t b = a + 1;
        bool dirty = s.cache->state(victims_[a].page) == PageState::kModified;
        while (b < end && victims_[b].page == victims_[b - 1].page + 1) {
          dirty = dirty || s.cache->state(victims_[b].page) == PageState::kModified;
          ++b;
        }
        if (dirty && !port_->Protect(space, victims_[a].page, b - a).ok()) {
          ++c_.port_failures;  // Release write-protects each page itself
        }
        a = b;
      }
      for (size_t k = i; k < end; ++k) {
        const PageIndex p = victims_[k].page;
        const bool dirty = s.cache->state(p) == PageState::kModified;
        if (s.cache->Release(p)) {
          ++round;
          ++c_.evictions;
          if (dirty) ++c_.eviction_writebacks;
        } else {
          // Only when its write-protect failed (CanRelease was checked and nothing ran
          // since). If its run was write-protected above, the next store is absorbed as a
          // sampling fault.
          if (dirty) Set(s.armed, p);
        }
      }
      port_->EndBatch(space);
      i = end;
    }
    // Sampling: write-protect the second-chance Modified pages, in runs. Only when this
    // round made progress: a node stuck over its budget (every page pending or pinned) would
    // otherwise re-arm the page a woken writer is about to store to, again and again.
    if (round == 0) arm_.clear();
    arm_.erase(std::remove_if(arm_.begin(), arm_.end(),
                              [this](const Pick& a) {
                                const Space& s = *spaces_[static_cast<size_t>(a.space)];
                                return !Test(s.resident, a.page) || !s.cache->CanRelease(a.page) ||
                                       s.cache->state(a.page) != PageState::kModified;
                              }),
               arm_.end());
    std::sort(arm_.begin(), arm_.end(), by_addr);
    for (size_t i = 0; i < arm_.size();) {
      size_t j = i + 1;
      while (j < arm_.size() && arm_[j].space == arm_[i].space &&
             arm_[j].page == arm_[j - 1].page + 1) {
        ++j;
      }
      Space& s = *spaces_[static_cast<size_t>(arm_[i].space)];
      if (port_->Protect(arm_[i].space, arm_[i].page, j - i).ok()) {
        for (size_t k = i; k < j; ++k) Set(s.armed, arm_[k].page);
        c_.pages_armed += j - i;
      } else {
        ++c_.port_failures;  // not armed: the pages look unreferenced until their next fault
      }
      i = j;
    }
    released += round;
    if (round == 0) break;
  }
  if (released > 0) ++c_.eviction_batches;
  if (resident_ + reserved_ > cfg_.budget_pages) ++c_.over_budget;
  return released;
}

}  // namespace dsm::coherence
