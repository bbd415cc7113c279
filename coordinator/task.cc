#include "coordinator/task.h"

namespace fedtail::coordinator {

const char* task_kind_name(TaskKind kind) {
  switch (kind) {
    case TaskKind::kFit:
      return "fit";
    case TaskKind::kEvaluate:
      return "evaluate";
    case TaskKind::kSecAgg:
      return "secagg";
  }
  return "?";
}

}  // namespace fedtail::coordinator
