#include "lock/interval_index.h"

#include <algorithm>
#include <iterator>

namespace dsm::lock {

uint32_t IntervalIndex::NextPrio() {
  // xorshift32
  rng_ ^= rng_ << 13;
  rng_ ^= rng_ >> 17;
  rng_ ^= rng_ << 5;
  return rng_;
}

void IntervalIndex::Pull(int32_t n) {
  Node& x = nodes_[n];
  x.max_end = x.end;
  if (x.left != kNil) x.max_end = std::max(x.max_end, nodes_[x.left].max_end);
  if (x.right != kNil) x.max_end = std::max(x.max_end, nodes_[x.right].max_end);
}

void IntervalIndex::Split(int32_t t, uint64_t start, uint64_t id, int32_t* l, int32_t* r) {
  if (t == kNil) {
    *l = *r = kNil;
    return;
  }
  Node& x = nodes_[t];
  if (Less(x.start, x.id, start, id)) {
    int32_t rl;
    Split(x.right, start, id, &rl, r);
    nodes_[t].right = rl;
    Pull(t);
    *l = t;
  } else {
    int32_t lr;
    Split(x.left, start, id, l, &lr);
    nodes_[t].left = lr;
    Pull(t);
    *r = t;
  }
}

int32_t IntervalIndex::Merge(int32_t l, int32_t r) {
  if (l == kNil) return r;
  if (r == kNil) return l;
  if (nodes_[l].prio > nodes_[r].prio) {
    const int32_t m = Merge(nodes_[l].right, r);
    nodes_[l].right = m;
    Pull(l);
    return l;
  }
  const int32_t m = Merge(l, nodes_[r].left);
  nodes_[r].left = m;
  Pull(r);
  return r;
}

void IntervalIndex::Insert(uint64_t start, uint64_t end, uint64_t id) {
  int32_t n;
  if (!free_.empty()) {
    n = free_.back();
    free_.pop_back();
  } else {
    n = static_cast<int32_t>(nodes_.size());
    nodes_.push_back({});
  }
  nodes_[n] = Node{start, end, id, end, NextPrio(), kNil, kNil};
  int32_t l, r;
  Split(root_, start, id, &l, &r);
  root_ = Merge(Merge(l, n), r);
  ++size_;
}

int32_t IntervalIndex::EraseFrom(int32_t t, uint64_t start, uint64_t id, int32_t* removed) {
  if (t == kNil) return kNil;
  Node& x = nodes_[t];
  if (x.start == start && x.id == id) {
    *removed = t;
    return Merge(x.left, x.right);
  }
  if (Less(start, id, x.start, x.id)) {
    const int32_t l = EraseFrom(x.left, start, id, removed);
    nodes_[t].left = l;
  } else {
    const int32_t r = EraseFrom(x.right, start, id, removed);
    nodes_[t].right = r;
  }
  Pull(t);
  return t;
}

bool IntervalIndex::Erase(uint64_t start, uint64_t id) {
  int32_t removed = kNil;
  root_ = EraseFrom(root_, start, id, &removed);
  if (removed == kNil) return false;
  free_.push_back(removed);
  --size_;
  if (size_ == 0) {  // reset the pool (keeps its capacity)
    nodes_.clear();
    free_.clear();
    root_ = kNil;
  }
  return true;
}

void RangeSet::Add(uint64_t a, uint64_t b) {
  if (a >= b) return;
  auto it = ranges_.upper_bound(a);
  if (it != ranges_.begin()) {
    auto prev = std::prev(it);
    if (prev->second >= a) {  // overlaps or touches: extend it
      a = prev->first;
      b = std::max(b, prev->second);
      it = ranges_.erase(prev);
    }
  }
  while (it != ranges_.end() && it->first <= b) {
    b = std::max(b, it->second);
    it = ranges_.erase(it);
  }
  ranges_.emplace(a, b);
}

void RangeSet::Subtract(uint64_t a, uint64_t b) {
  if (a >= b) return;
  auto it = ranges_.upper_bound(a);
  if (it != ranges_.begin()) {
    auto prev = std::prev(it);
    if (prev->second > a) {
      const uint64_t s = prev->first, e = prev->second;
      ranges_.erase(prev);
      if (s < a) ranges_.emplace(s, a);
      if (e > b) ranges_.emplace(b, e);
    }
  }
  it = ranges_.lower_bound(a);
  while (it != ranges_.end() && it->first < b) {
    const uint64_t e = it->second;
    it = ranges_.erase(it);
    if (e > b) {
      ranges_.emplace(b, e);
      break;
    }
  }
}

bool RangeSet::Overlaps(uint64_t a, uint64_t b) const {
  if (a >= b) return false;
  auto it = ranges_.lower_bound(b);  // first range starting at or after b
  if (it == ranges_.begin()) return false;
  return std::prev(it)->second > a;
}

}  // namespace dsm::lock
