#include "common/learning/torch_status.h"

#include <c10/util/Exception.h>

#include <string>

namespace fedtail {

Status torch_failure(std::string_view where, const std::exception& e) {
  std::string message(where);
  message += ": LibTorch failed: ";
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) {
    message += c10->what_without_backtrace();
  } else {
    message += e.what();
  }
  return Status::Internal(std::move(message));
}

}  // namespace fedtail
