#include "dsm/heap.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "heap/arena.h"

namespace dsm {
namespace {

constexpr uint64_t kPage = heap::kArenaPage;
uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

absl::Status CheckAlign(size_t align) {
  if (align == 0 || (align & (align - 1)) != 0 || align > kPage) {
    return absl::InvalidArgumentError(
        absl::StrCat("heap: alignment ", align, " is not a power of two up to 4096"));
  }
  return absl::OkStatus();
}

}  // namespace

struct Heap::State {
  Region* region = nullptr;
  uint8_t* base = nullptr;
  uint64_t header = 0;  // the heap's header page: the start of its range
  uint64_t collective_begin = 0, collective_end = 0;
  uint64_t shared_begin = 0, shared_end = 0;  // empty when the range is all collective
  absl::Duration lock_timeout;
  absl::Mutex mu;
  uint64_t collective_next ABSL_GUARDED_BY(mu) = 0;

  // Runs `fn` on the arena under the heap's cluster-wide lock (on the header's first bytes).
  // The header is created or checked first, so a node with other options fails here.
  template <class Fn>
  auto WithArena(Fn fn) -> decltype(fn(std::declval<heap::Arena&>())) {
    absl::StatusOr<LockGuard> guard =
        region->Lock(header, 64, LockMode::kExclusive, absl::Now() + lock_timeout);
    if (!guard.ok()) {
      return absl::Status(guard.status().code(),
                          absl::StrCat("heap lock: ", guard.status().message()));
    }
    heap::Arena arena(base, header, shared_begin, shared_end);
    if (absl::Status s = arena.Open(); !s.ok()) return s;
    auto result = fn(arena);
    (void)guard->Unlock();
    return result;
  }
};

Heap::Heap(std::unique_ptr<State> state) : state_(std::move(state)) {}
Heap::Heap(Heap&&) noexcept = default;
Heap& Heap::operator=(Heap&&) noexcept = default;
Heap::~Heap() = default;

absl::StatusOr<Heap> Heap::Attach(Region* region, const HeapOptions& o) {
  if (region == nullptr || region->data() == nullptr) {
    return absl::InvalidArgumentError("heap: no mapped region");
  }
  const uint64_t size = region->size();
  const uint64_t length = o.length == 0 && o.offset <= size ? size - o.offset : o.length;
  if (o.offset % kPage != 0 || length % kPage != 0 || o.offset > size ||
      length > size - o.offset || length == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "heap: range [", o.offset, ", +", length, ") must be page-aligned, non-empty and "
        "inside the region (", size, " bytes)"));
  }
  const uint64_t collective = RoundUp(o.collective_bytes, kPage);
  if (collective > length - kPage) {
    return absl::InvalidArgumentError(
        absl::StrCat("heap: collective_bytes ", o.collective_bytes, " do not fit in the heap's ",
                     length, " bytes (one page of which is its header)"));
  }
  auto s = std::make_unique<State>();
  s->region = region;
  s->base = static_cast<uint8_t*>(region->data());
  s->header = o.offset;
  s->collective_begin = o.offset + kPage;
  s->collective_end = s->collective_begin + collective;
  s->shared_begin = s->collective_end;
  s->shared_end = o.offset + length;
  s->lock_timeout = o.lock_timeout;
  {
    absl::MutexLock l(&s->mu);
    s->collective_next = s->collective_begin;
  }
  // Creates the header, or checks that it was made with the same options.
  absl::Status opened = s->WithArena([](heap::Arena&) { return absl::OkStatus(); });
  if (!opened.ok()) return opened;
  return Heap(std::move(s));
}

absl::StatusOr<void*> Heap::AllocateCollective(size_t bytes, size_t align,
                                               HeapPlacement placement) {
  if (absl::Status s = CheckAlign(align); !s.ok()) return s;
  if (bytes == 0) return absl::InvalidArgumentError("heap: allocation of 0 bytes");
  State& s = *state_;
  if (placement == HeapPlacement::kOwnPages) {
    align = kPage;
    bytes = RoundUp(bytes, kPage);
  }
  absl::MutexLock l(&s.mu);
  const uint64_t at = RoundUp(s.collective_next, align);
  if (at > s.collective_end || bytes > s.collective_end - at) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "heap: collective part full: ", bytes, " bytes asked, ",
        s.collective_end - std::min(at, s.collective_end), " left of ",
        s.collective_end - s.collective_begin, " (HeapOptions::collective_bytes)"));
  }
  s.collective_next = at + bytes;
  return static_cast<void*>(s.base + at);
}

absl::StatusOr<void*> Heap::Allocate(size_t bytes, size_t align, HeapPlacement placement) {
  if (absl::Status s = CheckAlign(align); !s.ok()) return s;
  if (placement == HeapPlacement::kOwnPages) {
    align = kPage;
    bytes = RoundUp(bytes, kPage);  // the block's end, too, is a page boundary
  }
  absl::StatusOr<uint64_t> off =
      state_->WithArena([&](heap::Arena& a) { return a.Allocate(bytes, align); });
  if (!off.ok()) return off.status();
  return static_cast<void*>(state_->base + *off);
}

absl::Status Heap::Free(void* p) {
  const uint64_t off = OffsetOf(p);
  if (p == nullptr || off < state_->shared_begin || off >= state_->shared_end) {
    return absl::InvalidArgumentError("heap: Free of a pointer outside the shared part");
  }
  return state_->WithArena([&](heap::Arena& a) { return a.Free(off); });
}

uint64_t Heap::OffsetOf(const void* p) const {
  return static_cast<uint64_t>(static_cast<const uint8_t*>(p) - state_->base);
}

void* Heap::At(uint64_t offset) const { return state_->base + offset; }

absl::StatusOr<HeapStats> Heap::GetStats() {
  HeapStats out;
  {
    absl::MutexLock l(&state_->mu);
    out.collective_used = state_->collective_next - state_->collective_begin;
  }
  out.collective_bytes = state_->collective_end - state_->collective_begin;
  absl::StatusOr<heap::ArenaStats> a = state_->WithArena(
      [](heap::Arena& arena) -> absl::StatusOr<heap::ArenaStats> { return arena.Stats(); });
  if (!a.ok()) return a.status();
  out.shared_capacity = a->capacity;
  out.allocated_bytes = a->allocated_bytes;
  out.allocations = a->allocations;
  out.free_bytes = a->free_list_bytes + a->top_bytes;
  return out;
}

}  // namespace dsm
