#include "simulations/worker_pool.h"

#include <signal.h>

#include <algorithm>
#include <filesystem>

namespace fedtail::simulation {

std::vector<std::pair<int, int>> split_clients(int n, int parts) {
  std::vector<std::pair<int, int>> ranges;
  if (n <= 0) return ranges;
  parts = std::clamp(parts, 1, n);
  int first = 0;
  for (int i = 0; i < parts; ++i) {
    const int size = n / parts + (i < n % parts ? 1 : 0);
    ranges.emplace_back(first, first + size - 1);
    first += size;
  }
  return ranges;
}

Result<std::unique_ptr<WorkerPool>> WorkerPool::start(const WorkerPoolOptions& options) {
  if (options.num_clients < 1) {
    return Status::InvalidArgument("workers: the run has no clients (config.data.clients)");
  }
  if (options.workers < 1) return Status::InvalidArgument("--workers: must be >= 1");
  std::error_code ec;
  std::filesystem::create_directories(options.log_dir, ec);
  if (ec) {
    return Status::IOError(options.log_dir +
                           ": cannot create the workers' log directory: " + ec.message());
  }
  std::unique_ptr<WorkerPool> pool(new WorkerPool());
  const auto ranges = split_clients(options.num_clients, options.workers);
  for (size_t i = 0; i < ranges.size(); ++i) {
    const auto [first, last] = ranges[i];
    SubprocessOptions spawn;
    if (i < options.launchers.size()) spawn.argv = options.launchers[i];
    spawn.argv.insert(spawn.argv.end(),
                      {options.client_binary, "--coordinator", options.coordinator, "--clients",
                       std::to_string(first) + "-" + std::to_string(last), "--state-dir",
                       options.state_dir, "--log-level", options.log_level});
    if (!options.devices.empty()) {
      spawn.argv.push_back("--device");
      spawn.argv.push_back(options.devices[i % options.devices.size()]);
    }
    if (options.threads_per_worker > 0) {
      spawn.argv.push_back("--threads");
      spawn.argv.push_back(std::to_string(options.threads_per_worker));
    }
    if (!options.tls_ca.empty()) {
      spawn.argv.push_back("--tls-ca");
      spawn.argv.push_back(options.tls_ca);
    }
    if (!options.token_secret_file.empty()) {
      spawn.argv.push_back("--token-secret-file");
      spawn.argv.push_back(options.token_secret_file);
    }
    if (!options.data_root.empty()) {
      spawn.argv.push_back("--data-root");
      spawn.argv.push_back(options.data_root);
    }
    if (!options.model_path.empty()) {
      spawn.argv.push_back("--model-path");
      spawn.argv.push_back(options.model_path);
    }
    for (const std::string& plugin : options.plugins) {
      spawn.argv.push_back("--plugin");
      spawn.argv.push_back(plugin);
    }
    Worker worker;
    worker.first = first;
    worker.last = last;
    worker.log_path =
        (std::filesystem::path(options.log_dir) / ("worker-" + std::to_string(i) + ".log"))
            .string();
    spawn.log_path = worker.log_path;
    spawn.append_log = true;  // a resumed run keeps the earlier attempt's log
    // Several processes share the cores: libgomp's spin-waiting would steal them from each other.
    spawn.env = {"OMP_WAIT_POLICY=PASSIVE"};
    FEDTAIL_ASSIGN_OR_RETURN(worker.process, Subprocess::spawn(spawn));
    pool->workers_.push_back(std::move(worker));
  }
  return pool;
}

WorkerLoss WorkerPool::loss_of(int i) const {
  const Worker& w = workers_[i];
  return {i, w.first, w.last, w.process->describe_exit(), w.log_path};
}

std::vector<WorkerLoss> WorkerPool::check() {
  std::vector<WorkerLoss> lost;
  for (size_t i = 0; i < workers_.size(); ++i) {
    Worker& w = workers_[i];
    if (w.reported || !w.process->poll()) continue;
    w.reported = true;
    lost.push_back(loss_of(static_cast<int>(i)));
  }
  return lost;
}

int WorkerPool::live_clients() const {
  int n = 0;
  for (const Worker& w : workers_) {
    if (!w.reported && !w.process->exited()) n += w.last - w.first + 1;
  }
  return n;
}

std::vector<WorkerLoss> WorkerPool::finish(std::chrono::milliseconds grace) {
  const auto until = std::chrono::steady_clock::now() + grace;
  std::vector<WorkerLoss> bad;
  for (size_t i = 0; i < workers_.size(); ++i) {
    Worker& w = workers_[i];
    const auto left = std::max(std::chrono::steady_clock::duration::zero(),
                               until - std::chrono::steady_clock::now());
    if (!w.process->wait_for(std::chrono::duration_cast<std::chrono::milliseconds>(left))) {
      w.process->signal(SIGTERM);  // a clean Leave, if it still can
      if (!w.process->wait_for(std::chrono::seconds(5))) w.process->kill();
    }
    if (w.reported) continue;
    w.reported = true;
    if (w.process->exit_code() != 0) bad.push_back(loss_of(static_cast<int>(i)));
  }
  return bad;
}

}  // namespace fedtail::simulation
