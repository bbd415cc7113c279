// Logging set-up shared by every fedtail binary: spdlog to stderr, one format, a level from the
// command line. Call init_logging() once at the start of main(), before any other thread starts.
#ifndef FEDTAIL_COMMON_BASE_LOGGING_H_
#define FEDTAIL_COMMON_BASE_LOGGING_H_

#include <string>

#include "common/base/status.h"

namespace fedtail {

// Sets the default spdlog logger to a stderr sink named `program` at `level` (trace, debug, info,
// warn, error, off). kInvalidArgument for an unknown level name.
Status init_logging(const std::string& program, const std::string& level = "info");

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_BASE_LOGGING_H_
