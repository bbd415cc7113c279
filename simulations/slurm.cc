#include "simulations/slurm.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <sstream>

extern char** environ;

namespace fedtail::simulation {
namespace {

// A non-negative decimal number without sign or spaces; false otherwise (or when it overflows).
bool parse_count(const std::string& text, int64_t* value) {
  if (text.empty() || text.size() > 15) return false;
  int64_t v = 0;
  for (char c : text) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
    v = v * 10 + (c - '0');
  }
  *value = v;
  return true;
}

// The count in variable `name` of `env`; `fallback` when unset or empty. Slurm writes some counts
// with a suffix of repeats, e.g. SLURM_TASKS_PER_NODE="2(x3)"; the variables read here have none.
Status read_count(const std::map<std::string, std::string>& env, const std::string& name,
                  int64_t fallback, int64_t* value) {
  auto it = env.find(name);
  if (it == env.end() || it->second.empty()) {
    *value = fallback;
    return Status::OK();
  }
  if (!parse_count(it->second, value)) {
    return Status::InvalidArgument(name + ": expected a count (got \"" + it->second + "\")");
  }
  return Status::OK();
}

// Appends to `out` every expansion of `text` (no top-level commas) from its first '['.
Status expand_item(const std::string& whole, const std::string& prefix, const std::string& text,
                   std::vector<std::string>* out) {
  const size_t open = text.find('[');
  if (open == std::string::npos) {
    if (text.find(']') != std::string::npos) {
      return Status::InvalidArgument("host list \"" + whole + "\": unbalanced ']'");
    }
    out->push_back(prefix + text);
    return Status::OK();
  }
  const size_t close = text.find(']', open);
  if (close == std::string::npos) {
    return Status::InvalidArgument("host list \"" + whole + "\": unbalanced '['");
  }
  const std::string head = prefix + text.substr(0, open);
  const std::string rest = text.substr(close + 1);
  std::stringstream ranges(text.substr(open + 1, close - open - 1));
  std::string range;
  bool any = false;
  while (std::getline(ranges, range, ',')) {
    any = true;
    const size_t dash = range.find('-');
    const std::string first_text = range.substr(0, dash);
    const std::string last_text = dash == std::string::npos ? first_text : range.substr(dash + 1);
    int64_t first = 0;
    int64_t last = 0;
    if (!parse_count(first_text, &first) || !parse_count(last_text, &last) || last < first) {
      return Status::InvalidArgument("host list \"" + whole + "\": bad range \"" + range + "\"");
    }
    const int width = static_cast<int>(first_text.size());
    for (int64_t n = first; n <= last; ++n) {
      char number[32];
      std::snprintf(number, sizeof(number), "%0*lld", width, static_cast<long long>(n));
      FEDTAIL_RETURN_IF_ERROR(expand_item(whole, head + number, rest, out));
    }
  }
  if (!any) return Status::InvalidArgument("host list \"" + whole + "\": empty brackets");
  return Status::OK();
}

}  // namespace

Result<std::vector<std::string>> expand_hostlist(const std::string& text) {
  std::vector<std::string> hosts;
  std::string item;
  int depth = 0;
  auto flush = [&]() -> Status {
    if (item.empty()) {
      return Status::InvalidArgument("host list \"" + text + "\": an empty entry");
    }
    FEDTAIL_RETURN_IF_ERROR(expand_item(text, "", item, &hosts));
    item.clear();
    return Status::OK();
  };
  for (char c : text) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (depth < 0 || depth > 1) {
      return Status::InvalidArgument("host list \"" + text + "\": unbalanced brackets");
    }
    if (c == ',' && depth == 0) {
      FEDTAIL_RETURN_IF_ERROR(flush());
    } else {
      item += c;
    }
  }
  if (depth != 0) return Status::InvalidArgument("host list \"" + text + "\": unbalanced '['");
  FEDTAIL_RETURN_IF_ERROR(flush());
  return hosts;
}

std::map<std::string, std::string> process_environment() {
  std::map<std::string, std::string> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const std::string text(*entry);
    const size_t equals = text.find('=');
    if (equals != std::string::npos) env[text.substr(0, equals)] = text.substr(equals + 1);
  }
  return env;
}

Result<SlurmAllocation> read_slurm_allocation(const std::map<std::string, std::string>& env) {
  SlurmAllocation allocation;
  auto job = env.find("SLURM_JOB_ID");
  if (job == env.end() || job->second.empty()) {
    return Status::FailedPrecondition(
        "--launcher slurm: not inside a Slurm allocation (SLURM_JOB_ID is unset): submit it with "
        "sbatch (tools/slurm/fedtail-sim.sbatch) or run it under salloc");
  }
  allocation.job_id = job->second;
  auto list = env.find("SLURM_JOB_NODELIST");
  if (list == env.end() || list->second.empty()) list = env.find("SLURM_NODELIST");
  if (list == env.end() || list->second.empty()) {
    return Status::InvalidArgument("SLURM_JOB_NODELIST: unset in allocation " + allocation.job_id);
  }
  {
    Result<std::vector<std::string>> nodes = expand_hostlist(list->second);
    if (!nodes.ok()) return nodes.status().with_context("SLURM_JOB_NODELIST");
    allocation.nodes = std::move(nodes).value();
  }
  auto name = env.find("SLURMD_NODENAME");
  if (name != env.end()) allocation.this_node = name->second;
  int64_t value = 0;
  FEDTAIL_RETURN_IF_ERROR(read_count(env, "SLURM_CPUS_ON_NODE", 1, &value));
  allocation.cpus_on_node = static_cast<int>(std::clamp<int64_t>(value, 1, 1 << 20));
  FEDTAIL_RETURN_IF_ERROR(read_count(env, "SLURM_NTASKS", 0, &value));
  allocation.ntasks = static_cast<int>(std::min<int64_t>(value, 1 << 20));
  FEDTAIL_RETURN_IF_ERROR(read_count(env, "SLURM_GPUS_ON_NODE", 0, &value));
  allocation.gpus_per_node = static_cast<int>(std::min<int64_t>(value, 1 << 10));
  FEDTAIL_RETURN_IF_ERROR(read_count(env, "SLURM_MEM_PER_NODE", 0, &value));
  allocation.mem_per_node_mb = value;
  return allocation;
}

int default_slurm_workers(const SlurmAllocation& allocation, bool cuda) {
  const int nodes = std::max<int>(1, static_cast<int>(allocation.nodes.size()));
  if (cuda && allocation.gpus_per_node > 0) return nodes * allocation.gpus_per_node;
  return allocation.ntasks > 0 ? allocation.ntasks : nodes;
}

int workers_per_node(const SlurmAllocation& allocation, int workers) {
  const int nodes = std::max<int>(1, static_cast<int>(allocation.nodes.size()));
  return std::max(1, (std::max(1, workers) + nodes - 1) / nodes);
}

int slurm_cpus_per_worker(const SlurmAllocation& allocation, int workers) {
  return std::max(1, allocation.cpus_on_node / workers_per_node(allocation, workers));
}

std::vector<std::string> srun_step_command(const SlurmAllocation& allocation,
                                           const SrunStepOptions& options) {
  const std::string& node = allocation.nodes[options.worker % allocation.nodes.size()];
  std::vector<std::string> argv = {
      options.srun,         "--nodes=1",
      "--ntasks=1",         "--exact",
      "--nodelist=" + node, "--cpus-per-task=" + std::to_string(options.cpus_per_task)};
  if (options.gpu) argv.push_back("--gpus-per-task=1");
  if (allocation.mem_per_node_mb > 0) {
    const int64_t share = std::max<int64_t>(
        1, allocation.mem_per_node_mb / workers_per_node(allocation, options.workers));
    argv.push_back("--mem=" + std::to_string(share) + "M");
  }
  argv.push_back("--job-name=fedtail-worker-" + std::to_string(options.worker));
  argv.insert(argv.end(), options.extra_args.begin(), options.extra_args.end());
  return argv;
}

Result<std::string> find_on_path(const std::string& program,
                                 const std::map<std::string, std::string>& env) {
  if (program.find('/') != std::string::npos) {
    if (::access(program.c_str(), X_OK) == 0) return program;
    return Status::NotFound(program + ": not an executable file");
  }
  auto path = env.find("PATH");
  std::stringstream dirs(path == env.end() ? std::string("/usr/bin:/bin") : path->second);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (dir.empty()) continue;
    const std::string candidate = dir + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return Status::NotFound(program + ": not found on PATH");
}

}  // namespace fedtail::simulation
