// Payload buffers for page runs, recycled per thread.
//
// A run of 64 pages travels in a 256 KiB std::vector. Allocated fresh for every run, glibc
// serves it from the thread's arena and gives it back to the kernel on free (a thread arena
// shrinks its heap with MADV_DONTNEED once the top chunk exceeds the trim threshold), so every
// run paid 64 page faults to touch the buffer again plus an unmap with its TLB flush, on both
// the home (building the reply) and the requester (decoding it). Recycling the buffers removes
// that: scan throughput rose ~1.5x in the measurement that motivated this (docs/PERFORMANCE.md).
//
//   std::vector<uint8_t> buf = TakePayloadBuffer(n);   // empty, capacity >= n
//   ... fill, send or decode into it ...
// or, for a buffer that is written page by page (a run reply, a write-back run):
//   std::vector<uint8_t> buf = TakePayloadBufferForOverwrite(n);  // size n, old bytes
//   ... overwrite every byte that is kept, resize() down to what was written ...
//   RecyclePayloadBuffer(std::move(buf));             // when the bytes are no longer needed
//
// Thread safety: each thread has its own pool (no locks); a buffer taken on one thread may be
// recycled on another. A pool keeps at most kPayloadPoolMax buffers; smaller ones than
// kPayloadPoolMinCapacity are not worth keeping and are simply freed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsm {

inline constexpr size_t kPayloadPoolMinCapacity = 64 * 1024;
inline constexpr size_t kPayloadPoolMax = 8;

// An empty buffer with capacity() >= bytes; from this thread's pool when bytes is at least
// kPayloadPoolMinCapacity and the pool has one large enough.
std::vector<uint8_t> TakePayloadBuffer(size_t bytes);

// A buffer of size() == bytes whose contents are unspecified (a recycled buffer's old bytes,
// which are this process's own data): for callers that overwrite every byte they keep. It
// spares the zero-fill of growing a buffer page by page, which took 86 % of the home's samples
// in the directory's run handler (perf annotate during a sequential scan).
std::vector<uint8_t> TakePayloadBufferForOverwrite(size_t bytes);

// Keeps `buf` for a later TakePayloadBuffer* on this thread if it is large enough and the pool
// is not full; frees it otherwise. `buf` is left empty either way.
void RecyclePayloadBuffer(std::vector<uint8_t>&& buf);

// Buffers in this thread's pool (tests).
size_t PayloadPoolSizeForTesting();

}  // namespace dsm
