// IntervalIndex: a set of half-open intervals [start, end) with ids, answering "which intervals
// overlap [a, b)" in O(log n + k) expected time (k = intervals visited that overlap, see
// ForEachOverlap). A treap keyed by (start, id), each node augmented with the largest `end` in
// its subtree; nodes live in one vector (no allocation per interval once warm).
//
// RangeSet: a set of bytes kept as disjoint, non-adjacent intervals (std::map start -> end).
//
// Thread safety: none; owned by one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

namespace dsm::lock {

class IntervalIndex {
 public:
  IntervalIndex() = default;

  // Adds [start, end), start < end. (start, id) must not be present.
  void Insert(uint64_t start, uint64_t end, uint64_t id);
  // Removes the interval with this (start, id). Returns false if absent.
  bool Erase(uint64_t start, uint64_t id);

  // Calls f(start, end, id) for intervals overlapping [a, b) (a < b), in no particular order,
  // until f returns false. Returns false if stopped early.
  template <typename F>
  bool ForEachOverlap(uint64_t a, uint64_t b, F&& f) const {
    return Visit(root_, a, b, f);
  }

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

 private:
  static constexpr int32_t kNil = -1;
  struct Node {
    uint64_t start, end, id, max_end;
    uint32_t prio;
    int32_t left, right;
  };

  template <typename F>
  bool Visit(int32_t n, uint64_t a, uint64_t b, F& f) const {
    while (n != kNil) {
      const Node& x = nodes_[n];
      if (x.max_end <= a) return true;  // nothing here ends after a
      if (!Visit(x.left, a, b, f)) return false;
      if (x.start >= b) return true;  // x and its right subtree start at or after b
      if (x.end > a && !f(x.start, x.end, x.id)) return false;
      n = x.right;
    }
    return true;
  }

  static bool Less(uint64_t s1, uint64_t i1, uint64_t s2, uint64_t i2) {
    return s1 < s2 || (s1 == s2 && i1 < i2);
  }
  void Pull(int32_t n);
  // Splits t into keys < (start, id) and keys >= (start, id).
  void Split(int32_t t, uint64_t start, uint64_t id, int32_t* l, int32_t* r);
  int32_t Merge(int32_t l, int32_t r);
  int32_t EraseFrom(int32_t t, uint64_t start, uint64_t id, int32_t* removed);
  uint32_t NextPrio();

  std::vector<Node> nodes_;
  std::vector<int32_t> free_;
  int32_t root_ = kNil;
  size_t size_ = 0;
  uint32_t rng_ = 0x9e3779b9u;  // deterministic: tests replay exactly
};

class RangeSet {
 public:
  void Add(uint64_t a, uint64_t b);       // adds [a, b)
  void Subtract(uint64_t a, uint64_t b);  // removes [a, b)
  bool Overlaps(uint64_t a, uint64_t b) const;
  bool empty() const { return ranges_.empty(); }
  const std::map<uint64_t, uint64_t>& ranges() const { return ranges_; }

 private:
  std::map<uint64_t, uint64_t> ranges_;  // start -> end; disjoint, never adjacent
};

}  // namespace dsm::lock
