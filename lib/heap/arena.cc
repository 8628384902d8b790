#include "heap/arena.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace dsm::heap {
namespace {

constexpr uint64_t kMagic = 0x3170616568'6d7364ULL;  // "dsmheap1"
constexpr uint64_t kVersion = 1;
constexpr uint64_t kGrain = 16;         // block starts and sizes are multiples of this
constexpr uint64_t kHeaderBytes = 16;   // BlockHeader
constexpr uint64_t kMinBlock = 32;      // a free block holds its header and a next link
constexpr uint32_t kFreeTag = 0x45455246;  // "FREE"
constexpr uint32_t kPadTag = 0x44444150;   // "PADD": a used block's start when its header is
                                           // one grain further (alignment)
uint32_t UsedTag(uint64_t payload) {       // bound to the payload's offset: a stale or copied
  return 0x44455355u ^ static_cast<uint32_t>(payload >> 4);  // header does not pass
}

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

}  // namespace

struct Arena::Header {
  uint64_t magic;
  uint64_t version;
  uint64_t begin;
  uint64_t blocks;
  uint64_t end;
  uint64_t top;        // offset where never-used memory starts
  uint64_t free_head;  // first free block (address order); 0 = none
  uint64_t allocated_bytes;
  uint64_t allocations;
};

// At a block's start (free, or used without padding) or one grain in (used, padded).
struct Arena::Block {
  uint64_t size;  // the whole block, from its start
  uint32_t tag;
  uint32_t lead;  // used blocks: bytes from the block's start to this header
  uint64_t next;  // free blocks only: the next free block (0 = none); payload otherwise
};

Arena::Header* Arena::header() const { return reinterpret_cast<Header*>(base_ + begin_); }
Arena::Block* Arena::block(uint64_t offset) const {
  return reinterpret_cast<Block*>(base_ + offset);
}

absl::Status Arena::Open() {
  if (begin_ % kArenaPage != 0 || blocks_ % kArenaPage != 0 || end_ % kArenaPage != 0 ||
      blocks_ < begin_ + kArenaPage || end_ < blocks_) {
    return absl::InvalidArgumentError(
        absl::StrCat("heap: header at ", begin_, ", blocks [", blocks_, ", ", end_,
                     "): must be page-aligned with the blocks after the header page"));
  }
  Header* h = header();
  if (h->magic == 0) {
    std::memset(h, 0, sizeof(Header));
    h->version = kVersion;
    h->begin = begin_;
    h->blocks = blocks_;
    h->end = end_;
    h->top = blocks_;
    h->magic = kMagic;
    return absl::OkStatus();
  }
  if (h->magic != kMagic || h->version != kVersion) {
    return absl::FailedPreconditionError(
        "the heap's memory holds something else (no dsm heap header): was it used for other "
        "data, or by another heap version?");
  }
  if (h->begin != begin_ || h->blocks != blocks_ || h->end != end_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the heap at ", begin_, " was created with its shared part at [", h->blocks, ", ",
        h->end, ") and is opened with [", blocks_, ", ", end_,
        "): every node must attach with the same HeapOptions"));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Arena::Allocate(uint64_t bytes, uint64_t align) {
  if (bytes == 0) return absl::InvalidArgumentError("heap: allocation of 0 bytes");
  if (align == 0 || (align & (align - 1)) != 0 || align > kArenaPage) {
    return absl::InvalidArgumentError(
        absl::StrCat("heap: alignment ", align, " is not a power of two up to 4096"));
  }
  if (bytes > end_ - blocks_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("heap: ", bytes, " bytes asked, the shared part holds ", end_ - blocks_));
  }
  Header* h = header();
  const uint64_t need = AlignUp(bytes, kGrain);
  align = align < kGrain ? kGrain : align;

  // Places a block at `at` whose payload is aligned; returns its total size from `at` and
  // sets `front` (bytes before it given back as a free block when worth keeping).
  auto place = [&](uint64_t at, uint64_t* payload, uint64_t* front) {
    *payload = AlignUp(at + kHeaderBytes, align);
    const uint64_t lead = *payload - kHeaderBytes - at;
    *front = lead >= kMinBlock ? lead : 0;
    return lead + kHeaderBytes + need;
  };
  auto write_used = [&](uint64_t start, uint64_t size, uint64_t payload) {
    const uint64_t lead = payload - kHeaderBytes - start;
    if (lead != 0) *block(start) = Block{size, kPadTag, static_cast<uint32_t>(lead), 0};
    Block* b = block(payload - kHeaderBytes);
    b->size = size;
    b->tag = UsedTag(payload);
    b->lead = static_cast<uint32_t>(lead);
    h->allocated_bytes += need;
    ++h->allocations;
  };

  // First fit in the free list.
  uint64_t prev = 0;
  for (uint64_t cur = h->free_head; cur != 0;) {
    Block* fb = block(cur);
    const uint64_t size = fb->size, next = fb->next;
    uint64_t payload = 0, front = 0;
    const uint64_t total = place(cur, &payload, &front);
    if (total <= size) {
      uint64_t rest = size - total;
      uint64_t used_size = total - front;
      if (rest < kMinBlock) {
        used_size += rest;
        rest = 0;
      }
      // The list keeps, in order: the front piece (at cur), then the rest (after the block).
      uint64_t link = next;
      if (rest != 0) {
        *block(cur + total) = Block{rest, kFreeTag, 0, next};
        link = cur + total;
      }
      if (front != 0) {
        *block(cur) = Block{front, kFreeTag, 0, link};
        link = cur;
      }
      if (prev == 0) {
        h->free_head = link;
      } else {
        block(prev)->next = link;
      }
      write_used(cur + front, used_size, payload);
      return payload;
    }
    prev = cur;
    cur = next;
  }

  // The bump area.
  const uint64_t at = h->top;
  uint64_t payload = 0, front = 0;
  const uint64_t total = place(at, &payload, &front);
  if (total > end_ - at) {
    const ArenaStats s = Stats();
    return absl::ResourceExhaustedError(absl::StrCat(
        "heap full: ", bytes, " bytes (alignment ", align, ") asked; ", s.top_bytes,
        " bytes left at the top and ", s.free_list_bytes, " in freed blocks, none large enough"));
  }
  h->top = at + total;
  write_used(at + front, total - front, payload);
  if (front != 0) InsertFree(at, front);
  return payload;
}

absl::Status Arena::Free(uint64_t offset) {
  Header* h = header();
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("heap: Free of offset ", offset, ": ", why));
  };
  if (offset < blocks_ + kHeaderBytes || offset >= h->top || offset % kGrain != 0) {
    return bad("not inside the heap's allocated blocks");
  }
  Block* b = block(offset - kHeaderBytes);
  if (b->tag != UsedTag(offset)) return bad("not the start of a live block (freed twice?)");
  const uint64_t start = offset - kHeaderBytes - b->lead;
  const uint64_t size = b->size;
  if (b->lead >= kMinBlock || size < kMinBlock || size % kGrain != 0 ||
      start < blocks_ || size > h->top - start) {
    return bad("its block header is corrupted");
  }
  const uint64_t payload_bytes = size - b->lead - kHeaderBytes;
  b->tag = 0;  // a second Free of this offset fails
  h->allocated_bytes -= payload_bytes < h->allocated_bytes ? payload_bytes : h->allocated_bytes;
  --h->allocations;
  InsertFree(start, size);
  return absl::OkStatus();
}

void Arena::InsertFree(uint64_t at, uint64_t size) {
  Header* h = header();
  // Neighbours in address order: pp -> prev -> [at] -> next.
  uint64_t pp = 0, prev = 0, next = h->free_head;
  while (next != 0 && next < at) {
    pp = prev;
    prev = next;
    next = block(next)->next;
  }
  if (next != 0 && at + size == next) {  // merge with the following free block
    size += block(next)->size;
    next = block(next)->next;
  }
  uint64_t before = prev;  // the list entry that will point at the merged block
  if (prev != 0 && prev + block(prev)->size == at) {  // merge into the preceding one
    at = prev;
    size += block(prev)->size;
    before = pp;
  }
  if (at + size == h->top) {  // back to the bump area: the block leaves the list
    h->top = at;
    if (before == 0) {
      h->free_head = next;
    } else {
      block(before)->next = next;
    }
    return;
  }
  *block(at) = Block{size, kFreeTag, 0, next};
  if (before == 0) {
    h->free_head = at;
  } else {
    block(before)->next = at;
  }
}

ArenaStats Arena::Stats() const {
  const Header* h = header();
  ArenaStats s;
  s.capacity = end_ - blocks_;
  s.allocated_bytes = h->allocated_bytes;
  s.allocations = h->allocations;
  s.top_bytes = end_ - h->top;
  for (uint64_t cur = h->free_head; cur != 0; cur = block(cur)->next) {
    s.free_list_bytes += block(cur)->size;
  }
  return s;
}

absl::Status Arena::Validate() const {
  const Header* h = header();
  auto bad = [](uint64_t at, absl::string_view why) {
    return absl::DataLossError(absl::StrCat("heap block at ", at, ": ", why));
  };
  uint64_t expect_free = h->free_head;
  uint64_t used = 0;
  bool prev_free = false;
  for (uint64_t at = blocks_; at < h->top;) {
    const Block* b = block(at);
    uint64_t size = b->size;
    if (b->tag == kFreeTag) {
      if (at != expect_free) return bad(at, "free block missing from the free list (or out of order)");
      if (prev_free) return bad(at, "two adjacent free blocks");
      expect_free = b->next;
      prev_free = true;
    } else {
      const uint32_t lead = b->tag == kPadTag ? b->lead : 0;
      const Block* u = block(at + lead);
      if (u->tag != UsedTag(at + lead + kHeaderBytes) || u->lead != lead) {
        return bad(at, "neither free nor a used block header");
      }
      size = u->size;
      ++used;
      prev_free = false;
    }
    if (size < kMinBlock || size % kGrain != 0 || size > h->top - at) {
      return bad(at, absl::StrCat("size ", size, " out of range"));
    }
    at += size;
    if (at == h->top && prev_free) return bad(at - size, "free block ends at the top");
  }
  if (expect_free != 0) return bad(expect_free, "free list entry beyond the blocks");
  if (used != h->allocations) {
    return absl::DataLossError(absl::StrCat("heap: ", used, " used blocks, header counts ",
                                            h->allocations));
  }
  return absl::OkStatus();
}

}  // namespace dsm::heap
