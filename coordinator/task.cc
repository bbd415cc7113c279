#include "coordinator/task.h"

namespace fedtail::coordinator {

const char* task_kind_name(TaskKind kind) { return kind == TaskKind::kFit ? "fit" : "evaluate"; }

}  // namespace fedtail::coordinator
