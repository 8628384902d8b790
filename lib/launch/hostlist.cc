#include "launch/hostlist.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace dsm::launch {
namespace {

absl::Status Bad(absl::string_view list, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("host list '", list, "': ", why));
}

// Splits on commas that are not inside brackets.
absl::StatusOr<std::vector<std::string>> SplitTopLevel(absl::string_view list) {
  std::vector<std::string> parts;
  std::string cur;
  int depth = 0;
  for (char c : list) {
    if (c == '[') ++depth;
    if (c == ']' && --depth < 0) return Bad(list, "']' without '['");
    if (c == ',' && depth == 0) {
      parts.push_back(std::move(cur));
      cur.clear();
      continue;
    }
    cur.push_back(c);
  }
  if (depth != 0) return Bad(list, "'[' without ']'");
  parts.push_back(std::move(cur));
  return parts;
}

// The values of one bracket body "01-03,7", as strings with their padding.
absl::StatusOr<std::vector<std::string>> ExpandRanges(absl::string_view list,
                                                      absl::string_view body) {
  std::vector<std::string> out;
  for (absl::string_view item : absl::StrSplit(body, ',')) {
    std::vector<absl::string_view> ends = absl::StrSplit(item, absl::MaxSplits('-', 1));
    uint64_t lo = 0, hi = 0;
    if (ends[0].empty() || !absl::SimpleAtoi(ends[0], &lo) ||
        ends[0].find_first_not_of("0123456789") != absl::string_view::npos) {
      return Bad(list, absl::StrCat("'", item, "' is not a number or a range"));
    }
    hi = lo;
    if (ends.size() == 2 &&
        (ends[1].empty() || !absl::SimpleAtoi(ends[1], &hi) ||
         ends[1].find_first_not_of("0123456789") != absl::string_view::npos)) {
      return Bad(list, absl::StrCat("'", item, "' is not a range"));
    }
    if (hi < lo) return Bad(list, absl::StrCat("range '", item, "' runs backwards"));
    if (hi - lo >= kMaxExpanded) return Bad(list, absl::StrCat("range '", item, "' is too long"));
    const size_t width = ends[0].size();
    for (uint64_t v = lo; v <= hi; ++v) {
      std::string s = absl::StrCat(v);
      if (s.size() < width) s.insert(0, width - s.size(), '0');
      out.push_back(std::move(s));
    }
  }
  return out;
}

absl::Status ExpandOne(absl::string_view list, absl::string_view name,
                       std::vector<std::string>* out) {
  const size_t open = name.find('[');
  if (open == absl::string_view::npos) {
    if (name.find(']') != absl::string_view::npos) return Bad(list, "']' without '['");
    out->emplace_back(name);
    return absl::OkStatus();
  }
  const size_t close = name.find(']', open);
  if (close == absl::string_view::npos) return Bad(list, "'[' without ']'");
  absl::StatusOr<std::vector<std::string>> values =
      ExpandRanges(list, name.substr(open + 1, close - open - 1));
  if (!values.ok()) return values.status();
  const absl::string_view prefix = name.substr(0, open);
  const absl::string_view rest = name.substr(close + 1);
  for (const std::string& v : *values) {
    std::vector<std::string> tails;
    absl::Status s = ExpandOne(list, rest, &tails);
    if (!s.ok()) return s;
    for (const std::string& t : tails) {
      if (out->size() >= kMaxExpanded) return Bad(list, "expands to too many names");
      out->push_back(absl::StrCat(prefix, v, t));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ExpandHostList(absl::string_view list) {
  absl::StatusOr<std::vector<std::string>> parts = SplitTopLevel(list);
  if (!parts.ok()) return parts.status();
  std::vector<std::string> out;
  for (const std::string& p : *parts) {
    if (p.empty()) return Bad(list, "empty host name");
    absl::Status s = ExpandOne(list, p, &out);
    if (!s.ok()) return s;
  }
  return out;
}

absl::StatusOr<std::vector<uint32_t>> ExpandTasksPerNode(absl::string_view list) {
  std::vector<uint32_t> out;
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("tasks per node '", list, "': ", why));
  };
  for (absl::string_view item : absl::StrSplit(list, ',')) {
    uint32_t count = 0, repeat = 1;
    absl::string_view num = item;
    const size_t paren = item.find('(');
    if (paren != absl::string_view::npos) {
      if (item.size() < paren + 4 || item[paren + 1] != 'x' || item.back() != ')') {
        return bad(absl::StrCat("'", item, "' is not N or N(xM)"));
      }
      num = item.substr(0, paren);
      absl::string_view times = item.substr(paren + 2, item.size() - paren - 3);
      if (!absl::SimpleAtoi(times, &repeat) || repeat == 0 ||
          times.find_first_not_of("0123456789") != absl::string_view::npos) {
        return bad(absl::StrCat("'", item, "' has a bad repeat count"));
      }
    }
    if (num.empty() || !absl::SimpleAtoi(num, &count) ||
        num.find_first_not_of("0123456789") != absl::string_view::npos) {
      return bad(absl::StrCat("'", item, "' is not a number"));
    }
    if (out.size() + repeat > kMaxExpanded) return bad("expands to too many nodes");
    out.insert(out.end(), repeat, count);
  }
  return out;
}

}  // namespace dsm::launch
