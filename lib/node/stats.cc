// Stats as data: printing, summing and subtracting follow Stats::ForEachField, the one list of
// fields (include/dsm/stats.h).
#include <cstdint>
#include <string>
#include <type_traits>

#include "absl/strings/str_format.h"
#include "dsm/stats.h"

DSM_NAMESPACE_BEGIN
namespace {

// Every field is a uint64_t or a bool followed by padding to 8 bytes, and visited once: a field
// declared but missing from ForEachField changes the count or the size, and fails here.
constexpr size_t CountFields() {
  size_t n = 0;
  Stats::ForEachField([&n](const char*, Stats::Kind, auto) { ++n; });
  return n;
}
static_assert(sizeof(Stats) == CountFields() * sizeof(uint64_t),
              "a field of dsm::Stats is missing from Stats::ForEachField");

template <typename T>
constexpr bool kIsFlag = std::is_same_v<T, bool Stats::*>;

}  // namespace

std::string Stats::ToString() const {
  std::string s;
  ForEachField([this, &s](const char* name, Kind, auto field) {
    absl::StrAppendFormat(&s, "%-24s %llu\n", name, static_cast<unsigned long long>(this->*field));
  });
  return s;
}

Stats& Stats::operator+=(const Stats& other) {
  ForEachField([this, &other](const char*, Kind, auto field) {
    if constexpr (kIsFlag<decltype(field)>) {
      this->*field = this->*field || other.*field;
    } else {
      this->*field += other.*field;
    }
  });
  return *this;
}

Stats& Stats::operator-=(const Stats& earlier) {
  ForEachField([this, &earlier](const char*, Kind kind, auto field) {
    if constexpr (!kIsFlag<decltype(field)>) {
      if (kind == Kind::kCounter) {
        this->*field = this->*field >= earlier.*field ? this->*field - earlier.*field : 0;
      }
    }
  });
  return *this;
}

DSM_NAMESPACE_END
