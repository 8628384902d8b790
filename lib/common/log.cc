#include "common/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

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

}  // namespace

void SetLogThreshold(LogSeverity s) { Threshold().store(static_cast<int>(s)); }

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
  stream_ << '\n';
  const std::string s = stream_.str();
  ssize_t unused = ::write(STDERR_FILENO, s.data(), s.size());
  (void)unused;
  if (severity_ == LogSeverity::kFatal) std::abort();
}

}  // namespace log_internal
}  // namespace dsm
