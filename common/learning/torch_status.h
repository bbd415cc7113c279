// LibTorch exceptions as fedtail Statuses, for code that calls LibTorch inside a try block.
#ifndef FEDTAIL_COMMON_LEARNING_TORCH_STATUS_H_
#define FEDTAIL_COMMON_LEARNING_TORCH_STATUS_H_

#include <exception>
#include <string_view>

#include "common/base/status.h"

namespace fedtail {

// Internal("<where>: LibTorch failed: <message>"). A c10::Error contributes its message without
// the C++ backtrace LibTorch appends; any other exception its what().
Status torch_failure(std::string_view where, const std::exception& e);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_LEARNING_TORCH_STATUS_H_
