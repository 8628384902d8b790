#include "coherence/types.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "common/log.h"

namespace dsm::coherence {

const char* PageStateName(PageState s) {
  switch (s) {
    case PageState::kInvalid:
      return "I";
    case PageState::kShared:
      return "S";
    case PageState::kModified:
      return "M";
  }
  return "?";
}

namespace internal {

void* MapLazy(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    DSM_LOG(FATAL) << "mmap of a " << bytes << "-byte coherence table failed: "
                   << std::strerror(errno) << " (raise ulimit -v or vm.max_map_count)";
  }
  return p;
}

void UnmapLazy(void* p, size_t bytes) {
  if (p != nullptr) munmap(p, bytes);
}

}  // namespace internal
}  // namespace dsm::coherence
