// A minimal logging facade shaped like absl/log (absent from Debian's abseil 20220623).
//
//   DSM_LOG(WARNING) << "peer " << id << " closed: " << status;
//
// Thread-safe: each statement is formatted into its own buffer and written with one write(2)
// to stderr. The threshold comes from DSM_LOG_LEVEL (INFO, WARNING, ERROR; default WARNING)
// or SetLogThreshold().
#pragma once

#include <sstream>

namespace dsm {

enum class LogSeverity { kInfo = 0, kWarning = 1, kError = 2, kFatal = 3 };

void SetLogThreshold(LogSeverity s);
bool LogEnabled(LogSeverity s);

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

