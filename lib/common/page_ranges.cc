#include "common/page_ranges.h"

#include "common/log.h"

namespace dsm {

void AddPage(std::vector<PageRange>* ranges, uint64_t page) {
  if (!ranges->empty()) {
    PageRange& last = ranges->back();
    if (page == last.end()) {
      ++last.count;
      return;
    }
    if (page >= last.first && page < last.end()) return;
  }
  ranges->push_back(PageRange{page, 1});
}

void LogLostRanges(absl::string_view what, const std::vector<PageRange>& ranges,
                   absl::string_view why) {
  LogLostRanges(what, ranges, [why](const PageRange&) { return std::string(why); });
}

void LogLostRanges(absl::string_view what, const std::vector<PageRange>& ranges,
                   absl::FunctionRef<std::string(const PageRange&)> why) {
  uint64_t rest_pages = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const PageRange& r = ranges[i];
    if (i < kMaxLostRangeLines) {
      DSM_LOG(WARNING) << what << ": pages [" << r.first << ", " << r.end() << ") lost ("
                       << r.count << (r.count == 1 ? " page): " : " pages): ") << why(r);
    } else {
      rest_pages += r.count;
    }
  }
  if (ranges.size() > kMaxLostRangeLines) {
    DSM_LOG(WARNING) << what << ": " << ranges.size() - kMaxLostRangeLines
                     << " more ranges lost (" << rest_pages << " pages, from page "
                     << ranges[kMaxLostRangeLines].first << "): "
                     << why(ranges[kMaxLostRangeLines]);
  }
}

}  // namespace dsm
