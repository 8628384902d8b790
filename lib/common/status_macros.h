// Small stand-ins for absl/status/status_macros.h, which Debian's abseil (20220623) lacks.
// Shaped like upstream so a later swap is mechanical.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define DSM_STATUS_CONCAT_INNER_(a, b) a##b
#define DSM_STATUS_CONCAT_(a, b) DSM_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define DSM_RETURN_IF_ERROR(expr)                  \
  do {                                             \
    ::absl::Status dsm_status_ = (expr);           \
    if (!dsm_status_.ok()) return dsm_status_;     \
  } while (0)

// `DSM_ASSIGN_OR_RETURN(auto x, MakeX());` declares/assigns x or returns the error.
#define DSM_ASSIGN_OR_RETURN(lhs, rexpr) \
  DSM_ASSIGN_OR_RETURN_IMPL_(DSM_STATUS_CONCAT_(dsm_statusor_, __LINE__), lhs, rexpr)
#define DSM_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                               \
  if (!tmp.ok()) return std::move(tmp).status();    \
  lhs = std::move(tmp).value()
