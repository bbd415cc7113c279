#include "client/fault_pause.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

namespace fedtail::client {
namespace {

struct FaultSpec {
  FaultPoint point = FaultPoint::kTrain;
  uint64_t round = 0;
  double seconds = 600;
};

// FEDTAIL_FAULT_PAUSE, parsed once; nullopt when unset or malformed.
std::optional<FaultSpec> parse_spec() {
  const char* text = std::getenv("FEDTAIL_FAULT_PAUSE");
  if (text == nullptr || *text == '\0') return std::nullopt;
  std::istringstream in(text);
  std::string point;
  FaultSpec spec;
  char colon = 0;
  bool ok = static_cast<bool>(std::getline(in, point, ':')) && static_cast<bool>(in >> spec.round);
  if (ok && in >> colon) ok = colon == ':' && static_cast<bool>(in >> spec.seconds) && in.eof();
  if (point == "download") {
    spec.point = FaultPoint::kDownload;
  } else if (point == "train") {
    spec.point = FaultPoint::kTrain;
  } else if (point == "upload") {
    spec.point = FaultPoint::kUpload;
  } else {
    ok = false;
  }
  if (!ok || spec.round == 0 || spec.seconds < 0) {
    spdlog::error(
        "FEDTAIL_FAULT_PAUSE=\"{}\" ignored: expected download|train|upload:<round>[:<seconds>]",
        text);
    return std::nullopt;
  }
  return spec;
}

// "<where> of round N<detail>" in the log line.
const char* where(FaultPoint point) {
  switch (point) {
    case FaultPoint::kDownload:
      return "during the download";
    case FaultPoint::kTrain:
      return "before training";
    case FaultPoint::kUpload:
      return "during the upload";
  }
  return "?";
}

const char* detail(FaultPoint point) {
  switch (point) {
    case FaultPoint::kDownload:
      return " (bundle header read, data not yet)";
    case FaultPoint::kUpload:
      return " (bundle header sent, data not yet)";
    default:
      return "";
  }
}

}  // namespace

void TEST_fault_pause(FaultPoint point, uint64_t round, const std::function<bool()>& stopping) {
  static const std::optional<FaultSpec> spec = parse_spec();
  static std::atomic<bool> fired{false};
  if (!spec || spec->point != point || spec->round != round || fired.exchange(true)) return;
  spdlog::warn("fault injection: pausing {} of round {}{} for {:g} s", where(point), round,
               detail(point), spec->seconds);
  const auto until =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(spec->seconds);
  while (std::chrono::steady_clock::now() < until && !(stopping && stopping())) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  spdlog::warn("fault injection: resuming round {}", round);
}

}  // namespace fedtail::client

namespace fedtail::client {

void TEST_fault_exit(const char* stage, uint64_t round) {
  static const char* const text = std::getenv("FEDTAIL_FAULT_EXIT");
  if (text == nullptr || *text == '\0') return;
  if (std::string(text) != std::string(stage) + ":" + std::to_string(round)) return;
  spdlog::warn("fault injection: exiting at {} of round {}", stage, round);
  spdlog::default_logger()->flush();
  std::_Exit(3);
}

}  // namespace fedtail::client
