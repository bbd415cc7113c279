// Simulation: a whole federation on one machine (docs/architecture.md). For each
// (strategy, seed) of the plan, one after another: the coordinator in-process on a loopback port,
// N fedtail-client worker processes hosting the virtual clients over the real transport, progress
// on screen; then the report (summary.json, summary.md, metrics.jsonl, PNG curves) in DIR.
//
// Layout of DIR: sim.log (everything logged), summary.json, summary.md, metrics.jsonl, *.png,
// curves/, and runs/<label>/seed-<s>/ — each run's coordinator state directory (config.json,
// metrics.jsonl, checkpoint.bundle, summary.json, final_model.bundle), its clients' state
// (clients/) and its workers' logs (workers/).
//
// Resume: with `resume`, finished runs are kept, an interrupted run continues from its last
// checkpoint (the coordinator's --resume; clients keep their state files), and the rest run.
// Overrides (--set PATH=VALUE, sim_config.h): applied to the config as read from the file, before
// anything reads it; listed in summary.json ("overrides"), summary.md and sim.log. Each run's
// config.json holds their result, so --resume with the same --set continues the runs, and with
// other ones it meets a changed config (the coordinator refuses to resume an interrupted run whose
// config differs from its checkpoint's; finished runs are kept).
// Worker loss: a worker that ends early is logged with its clients; the coordinator stops waiting
// for them (their tasks fail once they are silent for federation.client_timeout_s) and the run
// goes on; with every worker gone the run fails and the next one starts.
//
// Slurm (launcher "slurm"): inside an allocation (tools/slurm/fedtail-sim.sbatch, or salloc), the
// coordinator stays in this process, on the node running it, and listens on every interface; each
// worker is a job step (srun, simulations/slurm.h), placed round-robin over the allocation's nodes,
// one GPU each when GPUs were allocated and the device is CUDA. The transport is TLS with join
// tokens: each run gets its own CA, server certificate (for the host name workers dial) and token
// secret in runs/<label>/seed-<s>/tls/ (run_credentials.h). DIR must be on a filesystem that every
// node of the allocation sees (state, logs and credentials are there). The report names the job.
//
// Threading: run() on one thread; request_stop() from any (a signal-handling thread).
#ifndef FEDTAIL_SIMULATIONS_SIMULATION_H_
#define FEDTAIL_SIMULATIONS_SIMULATION_H_

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "coordinator/live_status.h"
#include "simulations/progress.h"
#include "simulations/report.h"
#include "simulations/sim_config.h"
#include "simulations/slurm.h"

namespace fedtail::simulation {

struct SimulationOptions {
  std::string config_path;           // required
  std::string out_dir;               // required
  bool resume = false;               // continue the simulation in out_dir
  bool overwrite = false;            // discard earlier results in out_dir
  PlanFlags plan;                    // --rounds, --strategies, --seeds, --workers
  std::string device;                // workers' --device; "" = the config's ("auto": GPUs if any)
  int threads = 0;                   // LibTorch threads per worker; 0 = cores / workers
  std::vector<std::string> plugins;  // strategy plugins, loaded here and by every worker
  std::string client_binary;         // fedtail-client; "" = beside this program
  std::string log_level = "info";
  std::string worker_log_level = "info";
  bool terminal = false;  // draw a progress bar (stderr is a terminal)

  // How workers start: "local" (processes here; the coordinator on loopback, plaintext) or
  // "slurm" (job steps of the enclosing allocation; see Slurm above).
  std::string launcher = "local";
  std::string coordinator_host;        // slurm: the name workers dial; "" = this host's name
  std::vector<std::string> srun_args;  // slurm: extra srun arguments of every worker step

  // --set PATH=VALUE, applied in order (see Overrides above).
  std::vector<std::string> overrides;

  // --http: the dashboard's state; each run's coordinator feeds it in turn (one run at a time).
  // Null: no dashboard.
  std::shared_ptr<coordinator::LiveStatus> live;
};

class Simulation {
 public:
  // Reads the config, applies the overrides, checks it (every run's config, and the pre-flight of
  // config_check.h without building data or initializing: each distinct data section present,
  // each strategy's factories, each model's options), then prepares out_dir and logging. Nothing
  // is created when a check fails. Errors name the flag, file or JSON path; kFailedPrecondition
  // "<config>: cannot start: <first problem>[; and N more problems ...]" when the pre-flight
  // fails (e.g. data absent), or when out_dir holds an earlier simulation and neither resume nor
  // overwrite is given; kFailedPrecondition for launcher "slurm" outside an allocation, kNotFound
  // when srun is not on PATH; kInvalidArgument for another launcher. The strategy registry must
  // hold the builtins (and the plugins are loaded by the caller).
  static Result<std::unique_ptr<Simulation>> create(SimulationOptions options);

  // Runs every run of the plan and writes the report. OK when every run completed;
  // kUnavailable when stopped (the report of what finished is written; --resume continues);
  // kInternal naming the failed runs otherwise.
  Status run();
  // Ends the simulation soon: the current run is abandoned at its last checkpoint. Thread-safe.
  void request_stop();

  const SimulationPlan& plan() const { return plan_; }
  // summary.md's text, after run().
  const std::string& markdown() const { return markdown_; }

 private:
  explicit Simulation(SimulationOptions options) : options_(std::move(options)) {}
  Status init();
  Status init_slurm();
  // Slurm: the srun prefix of every worker of a run (empty in local mode).
  std::vector<std::vector<std::string>> worker_launchers() const;
  Result<RunResult> run_one(const StrategyEntry& entry, uint64_t seed);
  Status write_report(const std::vector<RunResult>& results, bool final);
  std::string path(const std::string& relative) const;

  // Constant after create().
  SimulationOptions options_;
  nlohmann::json config_;
  SimulationPlan plan_;
  std::vector<std::string> devices_;  // per worker, round-robin; empty = config's
  int workers_ = 1;
  int threads_per_worker_ = 0;
  int coordinator_threads_ = 1;
  std::optional<SlurmAllocation> slurm_;  // set for launcher "slurm"
  std::string srun_;                      // slurm: the srun program
  std::string coordinator_host_;          // slurm: what workers dial
  bool slurm_gpus_ = false;               // slurm: one allocated GPU per worker step
  std::unique_ptr<Progress> progress_;
  std::chrono::steady_clock::time_point started_;
  int run_index_ = 0;  // 1-based position in the plan of the run in progress (run() only)
  std::string markdown_;

  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;  // a run ended, or stop
};

}  // namespace fedtail::simulation

#endif  // FEDTAIL_SIMULATIONS_SIMULATION_H_
