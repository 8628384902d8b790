// The compute kernels of the example applications (sor, matmul, counter_table) on plain
// pointers, with no dsm code: the examples run them on a dsm region, and dsm_bench
// (bench/bench_apps.cc) runs the same code on a region and on private memory in one process,
// the plain run each application figure is compared with and checked against.
//
// Every kernel is deterministic and splits its work by blocks of rows (or by node id), so a
// run on any number of nodes gives the same bytes as the plain run: the examples and the
// benchmarks compare results bit for bit.
//
// Thread safety: plain functions; callers split the data between nodes as described.
#pragma once

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"

namespace app {

inline constexpr uint64_t kKernelPage = 4096;

// Rows [first, end) of node `index` of `nodes` when `rows` rows starting at row `base` are
// split in equal blocks (the last one shorter, possibly empty).
struct RowBlock {
  uint64_t first = 0;
  uint64_t end = 0;
};
inline RowBlock SplitRows(uint64_t base, uint64_t rows, uint64_t nodes, uint64_t index) {
  const uint64_t per = (rows + nodes - 1) / nodes;
  return {base + std::min(rows, index * per), base + std::min(rows, (index + 1) * per)};
}

// ---- sor: red-black successive over-relaxation -----------------------------------------------
// An (n+2) x (n+2) grid: n x n interior points, rows and columns 0 and n+1 the boundary (the
// top edge hot). Red-black ordering makes the result independent of how rows are split.

struct SorGrid {
  double* cells;
  uint64_t n;       // interior points per side
  uint64_t stride;  // doubles per row, padded to whole pages (SorStride)
  double& at(uint64_t i, uint64_t j) const { return cells[i * stride + j]; }
};

// Doubles per row, padded to whole pages so that row blocks share only their boundary rows.
inline uint64_t SorStride(uint64_t n) {
  return ((n + 2) * sizeof(double) + kKernelPage - 1) / kKernelPage * kKernelPage / sizeof(double);
}
inline uint64_t SorGridBytes(uint64_t n) { return (n + 2) * SorStride(n) * sizeof(double); }

// The interior rows node `index` of `nodes` updates (rows 1..n in blocks), and the rows it
// initializes: its block, plus row 0 on the first node and row n+1 on the last.
inline RowBlock SorRows(uint64_t n, uint64_t nodes, uint64_t index) {
  return SplitRows(1, n, nodes, index);
}
inline RowBlock SorInitRows(uint64_t n, uint64_t nodes, uint64_t index) {
  RowBlock b = SorRows(n, nodes, index);
  if (index == 0) b.first = 0;
  if (index + 1 == nodes) b.end = n + 2;
  return b;
}

inline void SorInit(const SorGrid& g, uint64_t first_row, uint64_t end_row) {
  for (uint64_t i = first_row; i < end_row; ++i) {
    for (uint64_t j = 0; j < g.n + 2; ++j) g.at(i, j) = i == 0 ? 1.0 : 0.0;  // hot top edge
  }
}

// One colour of rows [first, end): points with (i + j) % 2 == colour.
inline void SorHalfStep(const SorGrid& g, uint64_t first, uint64_t end, int colour, double omega) {
  for (uint64_t i = first; i < end; ++i) {
    for (uint64_t j = 1 + (i + 1 + colour) % 2; j <= g.n; j += 2) {
      const double sum = g.at(i - 1, j) + g.at(i + 1, j) + g.at(i, j - 1) + g.at(i, j + 1);
      g.at(i, j) = (1.0 - omega) * g.at(i, j) + omega * 0.25 * sum;
    }
  }
}

// `iters` iterations (two half-steps each) over the whole grid, in one process.
inline void SorSweeps(const SorGrid& g, uint64_t iters, double omega) {
  for (uint64_t it = 0; it < iters; ++it) {
    for (int colour = 0; colour < 2; ++colour) SorHalfStep(g, 1, g.n + 1, colour, omega);
  }
}

// ---- matmul: C = A x B, n x n doubles, row-major, rows of C split across nodes -------------

inline double MatmulA(uint64_t i, uint64_t j) {
  return static_cast<double>((i * 7 + j * 3) % 17) - 8.0;
}
inline double MatmulB(uint64_t i, uint64_t j) {
  return static_cast<double>((i * 5 + j * 11) % 13) * 0.5;
}
// Bytes of one matrix, rounded up to whole pages (each matrix starts on a page).
inline uint64_t MatmulMatrixBytes(uint64_t n) {
  return (n * n * sizeof(double) + kKernelPage - 1) / kKernelPage * kKernelPage;
}
inline RowBlock MatmulRows(uint64_t n, uint64_t nodes, uint64_t index) {
  return SplitRows(0, n, nodes, index);
}

// Rows [first, end) of A and B.
inline void MatmulFill(double* a, double* b, uint64_t n, uint64_t first, uint64_t end) {
  for (uint64_t i = first; i < end; ++i) {
    for (uint64_t j = 0; j < n; ++j) {
      a[i * n + j] = MatmulA(i, j);
      b[i * n + j] = MatmulB(i, j);
    }
  }
}

// Rows [first, end) of C = A x B (every row of B is read).
inline void MatmulMultiply(const double* a, const double* b, double* c, uint64_t n, uint64_t first,
                           uint64_t end) {
  for (uint64_t i = first; i < end; ++i) {
    double* row = c + i * n;
    for (uint64_t j = 0; j < n; ++j) row[j] = 0;
    for (uint64_t k = 0; k < n; ++k) {
      const double aik = a[i * n + k];
      const double* brow = b + k * n;
      for (uint64_t j = 0; j < n; ++j) row[j] += aik * brow[j];
    }
  }
}

// ---- counter table: random records incremented under a lock and atomically ----------------

struct alignas(64) CounterRecord {
  uint64_t value;
  uint64_t pad[7];
};
static_assert(sizeof(CounterRecord) == 64);

// The record node `node` touches at its k-th operation (a fixed mixing function, so any
// process can recompute every node's sequence).
inline uint64_t CounterPick(uint64_t node, uint64_t k, uint64_t records) {
  uint64_t x = (node + 1) * 0x9e3779b97f4a7c15ULL + k * 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 31;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 29;
  return x % records;
}

// The two tables (records of `record_bytes`, 64 or a page each) and one node's report (how
// often it touched each record).
struct CounterTables {
  uint8_t* locked;
  uint8_t* atomic;
  uint64_t record_bytes;
  uint64_t records;
  CounterRecord* Locked(uint64_t r) const {
    return reinterpret_cast<CounterRecord*>(locked + r * record_bytes);
  }
  CounterRecord* Atomic(uint64_t r) const {
    return reinterpret_cast<CounterRecord*>(atomic + r * record_bytes);
  }
};

// Node `node`'s `ops` operations: pick a record, increment its locked copy with a plain
// read-modify-write inside with_lock(record address, update) (which must run `update` while
// the record is locked, or return an error without running it), increment its atomic copy
// with __atomic_fetch_add, and count it in report[record]. Stops at the first error.
template <typename WithLock>
absl::Status CounterOps(const CounterTables& t, uint32_t* report, uint64_t node, uint64_t ops,
                        WithLock&& with_lock) {
  for (uint64_t k = 0; k < ops; ++k) {
    const uint64_t r = CounterPick(node, k, t.records);
    CounterRecord* locked = t.Locked(r);
    absl::Status s =
        with_lock(static_cast<void*>(locked), [locked] { locked->value = locked->value + 1; });
    if (!s.ok()) return s;
    __atomic_fetch_add(&t.Atomic(r)->value, 1, __ATOMIC_RELAXED);
    ++report[r];
  }
  return absl::OkStatus();
}

// with_lock for a single process: nobody else touches the tables.
struct NoLock {
  template <typename Update>
  absl::Status operator()(void*, const Update& update) const {
    update();
    return absl::OkStatus();
  }
};

}  // namespace app
