// WorkerPool: the fedtail-client processes of one simulation run, each hosting a contiguous range
// of virtual clients (`fedtail-client --clients A-B`), and what became of them.
//
// Workers are ordinary clients: they dial the coordinator over the real transport, derive their
// clients' data from the run config and seed, and keep per-client state under a state directory.
// A worker may run under a launcher (WorkerPoolOptions::launchers, e.g. srun on a Slurm
// allocation): the pool then follows the launcher's process, which lives as long as the worker.
// The pool starts them, notices one that ends before the run does (check()), and on finish() waits
// for the rest to leave after the coordinator's SHUTDOWN (killing any that do not). Not
// thread-safe: one thread drives a pool.
#ifndef FEDTAIL_SIMULATIONS_WORKER_POOL_H_
#define FEDTAIL_SIMULATIONS_WORKER_POOL_H_

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/base/subprocess.h"

namespace fedtail::simulation {

struct WorkerPoolOptions {
  std::string client_binary;         // path of fedtail-client
  std::string coordinator;           // HOST:PORT
  int num_clients = 0;               // virtual clients 0 .. num_clients-1, split evenly
  int workers = 1;                   // processes (at most num_clients)
  std::vector<std::string> devices;  // --device of worker i is devices[i % size]; empty = none
  int threads_per_worker = 0;        // --threads; 0 = the run config's
  std::string state_dir;             // --state-dir (per-client state files)
  std::string log_dir;               // worker-<i>.log files
  std::vector<std::string> plugins;  // --plugin, repeated
  std::string log_level = "info";
  // Worker i runs as launchers[i] followed by its own argv (e.g. an `srun ...` job step, whose exit
  // status is the worker's); a worker without an entry (or an empty one) runs directly.
  std::vector<std::vector<std::string>> launchers;
  std::string tls_ca;             // --tls-ca (verify the coordinator); "" = plaintext (loopback)
  std::string token_secret_file;  // --token-secret-file (derive join tokens); "" = none
  // The run config's data.root and model.path (torchscript), given to every worker as
  // --data-root / --model-path: clients never take them from the coordinator, but a simulation's
  // workers are the user's own processes. "" = not passed.
  std::string data_root;
  std::string model_path;
};

// A worker that ended before the run did.
struct WorkerLoss {
  int worker = 0;
  int first_client = 0;  // the range it hosted
  int last_client = 0;
  std::string how;  // Subprocess::describe_exit(), e.g. "killed by signal 9 (Killed)"
  std::string log_path;
};

class WorkerPool {
 public:
  // Starts the workers. kInvalidArgument for a bad option (no clients, workers < 1); kIOError when
  // a process cannot be started (the ones already started are killed).
  static Result<std::unique_ptr<WorkerPool>> start(const WorkerPoolOptions& options);

  // Kills workers still running.
  ~WorkerPool() = default;
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Workers that ended since the last call (each reported once).
  std::vector<WorkerLoss> check();
  // Clients hosted by workers still running.
  int live_clients() const;
  int size() const { return static_cast<int>(workers_.size()); }

  // After the run: waits up to `grace` for every worker to exit, then kills the rest. Returns the
  // workers that did not exit cleanly (code != 0, signal, or killed here), excluding those already
  // reported by check().
  std::vector<WorkerLoss> finish(std::chrono::milliseconds grace);

 private:
  struct Worker {
    int first = 0;
    int last = 0;
    std::string log_path;
    std::unique_ptr<Subprocess> process;
    bool reported = false;
  };
  WorkerPool() = default;
  WorkerLoss loss_of(int i) const;

  std::vector<Worker> workers_;
};

// Splits clients 0..n-1 into `parts` contiguous ranges whose sizes differ by at most one; returns
// {first, last} pairs. parts is clamped to [1, n].
std::vector<std::pair<int, int>> split_clients(int n, int parts);

}  // namespace fedtail::simulation

#endif  // FEDTAIL_SIMULATIONS_WORKER_POOL_H_
