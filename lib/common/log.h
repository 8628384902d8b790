// A minimal logging facade shaped like absl/log (absent from Debian's abseil 20220623).
//
//   DSM_LOG(WARNING) << "peer " << id << " closed: " << status;
//
// Thread-safe: each statement is formatted into its own buffer and written with one write(2)
// to stderr, or handed to the installed sink. The threshold comes from DSM_LOG_LEVEL (INFO,
// WARNING, ERROR; default WARNING) or SetLogThreshold(). Both are process-wide (Options::
// log_level and log_sink set them through Node::Create).
#pragma once

#include <cstdint>
#include <functional>
#include <sstream>
#include <string>

namespace dsm {

enum class LogSeverity { kInfo = 0, kWarning = 1, kError = 2, kFatal = 3 };

void SetLogThreshold(LogSeverity s);
LogSeverity LogThreshold();
bool LogEnabled(LogSeverity s);

// Receives each enabled line (formatted as on stderr, without the newline) instead of stderr.
// Called from any thread, concurrently; must not log itself.
using LogSink = std::function<void(LogSeverity severity, const std::string& line)>;
// Installs `sink` in place of the current one (or stderr); returns a token for RemoveLogSink.
uint64_t InstallLogSink(LogSink sink);
// Uninstalls the sink installed with `token` if it is still the current one (stderr again),
// after every call in progress to it has returned. Otherwise does nothing.
void RemoveLogSink(uint64_t token);

// RAII form: installs a sink (none if empty) and removes it when destroyed.
class ScopedLogSink {
 public:
  ScopedLogSink() = default;
  explicit ScopedLogSink(LogSink sink) : token_(sink ? InstallLogSink(std::move(sink)) : 0) {}
  ~ScopedLogSink() { Reset(nullptr); }
  // Removes the sink installed by this object, if any, then installs `sink` (if not empty).
  void Reset(LogSink sink) {
    if (token_ != 0) RemoveLogSink(token_);
    token_ = sink ? InstallLogSink(std::move(sink)) : 0;
  }
  ScopedLogSink(const ScopedLogSink&) = delete;
  ScopedLogSink& operator=(const ScopedLogSink&) = delete;

 private:
  uint64_t token_ = 0;
};

namespace log_internal {
class LogMessage {
 public:
  LogMessage(LogSeverity s, const char* file, int line);
  ~LogMessage();  // writes the line; aborts after kFatal
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogSeverity severity_;
  std::ostringstream stream_;
};
// Swallows the stream expression when the severity is disabled.
struct Voidify {
  void operator&(std::ostream&) {}
};
}  // namespace log_internal
}  // namespace dsm

#define DSM_LOG_SEVERITY_INFO ::dsm::LogSeverity::kInfo
#define DSM_LOG_SEVERITY_WARNING ::dsm::LogSeverity::kWarning
#define DSM_LOG_SEVERITY_ERROR ::dsm::LogSeverity::kError
#define DSM_LOG_SEVERITY_FATAL ::dsm::LogSeverity::kFatal

#define DSM_LOG(sev)                                  \
  !::dsm::LogEnabled(DSM_LOG_SEVERITY_##sev)          \
      ? (void)0                                       \
      : ::dsm::log_internal::Voidify() &              \
            ::dsm::log_internal::LogMessage(DSM_LOG_SEVERITY_##sev, __FILE__, __LINE__).stream()

