#include "common/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace dsm {
namespace {

LogSeverity ThresholdFromEnv() {
  const char* env = std::getenv("DSM_LOG_LEVEL");
  if (env == nullptr) return LogSeverity::kWarning;
  if (std::strcmp(env, "INFO") == 0) return LogSeverity::kInfo;
  if (std::strcmp(env, "ERROR") == 0) return LogSeverity::kError;
  return LogSeverity::kWarning;
}

std::atomic<int>& Threshold() {
  static std::atomic<int> t{static_cast<int>(ThresholdFromEnv())};
  return t;
}

const char* Name(LogSeverity s) {
  switch (s) {
    case LogSeverity::kInfo: return "I";
    case LogSeverity::kWarning: return "W";
    case LogSeverity::kError: return "E";
    case LogSeverity::kFatal: return "F";
  }
  return "?";
}

// The installed sink. Calls hold the reader lock, so RemoveLogSink (the writer) returns only
// after every call in progress has returned: a sink may capture what its node owns.
struct SinkSlot {
  absl::Mutex mu;
  LogSink sink ABSL_GUARDED_BY(mu);
  uint64_t token ABSL_GUARDED_BY(mu) = 0;
  uint64_t next_token ABSL_GUARDED_BY(mu) = 1;
};
SinkSlot& Slot() {
  static SinkSlot* slot = new SinkSlot;  // never destroyed: logging may run at exit
  return *slot;
}
std::atomic<bool> g_has_sink{false};

}  // namespace

void SetLogThreshold(LogSeverity s) { Threshold().store(static_cast<int>(s)); }

LogSeverity LogThreshold() { return static_cast<LogSeverity>(Threshold().load()); }

uint64_t InstallLogSink(LogSink sink) {
  SinkSlot& slot = Slot();
  absl::MutexLock l(&slot.mu);
  slot.sink = std::move(sink);
  slot.token = slot.next_token++;
  g_has_sink.store(true, std::memory_order_release);
  return slot.token;
}

void RemoveLogSink(uint64_t token) {
  SinkSlot& slot = Slot();
  absl::MutexLock l(&slot.mu);
  if (token == 0 || slot.token != token) return;
  slot.sink = nullptr;
  slot.token = 0;
  g_has_sink.store(false, std::memory_order_release);
}

bool LogEnabled(LogSeverity s) {
  return s == LogSeverity::kFatal || static_cast<int>(s) >= Threshold().load(std::memory_order_relaxed);
}

namespace log_internal {

LogMessage::LogMessage(LogSeverity s, const char* file, int line) : severity_(s) {
  const char* base = std::strrchr(file, '/');
  stream_ << Name(s) << absl::FormatTime("%H:%M:%E6S", absl::Now(), absl::LocalTimeZone()) << " dsm["
          << getpid() << "] " << (base ? base + 1 : file) << ":" << line << "] ";
}

LogMessage::~LogMessage() {
  if (g_has_sink.load(std::memory_order_acquire)) {
    SinkSlot& slot = Slot();
    absl::ReaderMutexLock l(&slot.mu);
    if (slot.sink) {
      slot.sink(severity_, stream_.str());
      if (severity_ == LogSeverity::kFatal) std::abort();
      return;
    }
  }
  stream_ << '\n';
  const std::string s = stream_.str();
  ssize_t unused = ::write(STDERR_FILENO, s.data(), s.size());
  (void)unused;
  if (severity_ == LogSeverity::kFatal) std::abort();
}

}  // namespace log_internal
}  // namespace dsm
