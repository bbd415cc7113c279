#include "common/base/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace fedtail {

Status init_logging(const std::string& program, const std::string& level) {
  auto parsed = spdlog::level::from_str(level);
  // from_str maps unknown names to "off"; only "off" itself may mean off.
  if (parsed == spdlog::level::off && level != "off") {
    return Status::InvalidArgument(
        "--log-level: must be one of trace, debug, info, warn, error, off (got \"" + level + "\")");
  }
  spdlog::drop(program);  // a second call replaces the logger instead of throwing
  auto logger = spdlog::stderr_color_mt(program);
  logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%n] [%^%l%$] %v");
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
  return Status::OK();
}

}  // namespace fedtail
