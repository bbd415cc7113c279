// Slurm: what `fedtail-sim --launcher slurm` reads from the allocation it runs in, and the srun
// command that starts one worker as a job step. The simulation runs inside an allocation (the
// batch script of tools/slurm/fedtail-sim.sbatch, or salloc): the coordinator in fedtail-sim on the
// node running it, each fedtail-client worker as its own step (`srun --nodes=1 --ntasks=1 --exact`)
// so that the worker pool follows each one as a process (srun exits with its task's status).
// Workers go round-robin over the allocation's nodes: worker i on node i % nodes.
//
// Free functions of their arguments (the environment is passed in); thread-safe.
#ifndef FEDTAIL_SIMULATIONS_SLURM_H_
#define FEDTAIL_SIMULATIONS_SLURM_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/base/status.h"

namespace fedtail::simulation {

// The allocation, as its environment variables describe it.
struct SlurmAllocation {
  std::string job_id;              // SLURM_JOB_ID
  std::vector<std::string> nodes;  // SLURM_JOB_NODELIST, expanded, in its order
  std::string this_node;           // SLURMD_NODENAME ("" when unset)
  int cpus_on_node = 1;            // SLURM_CPUS_ON_NODE: CPUs of the job on this node (>= 1)
  int ntasks = 0;                  // SLURM_NTASKS; 0 = not given
  int gpus_per_node = 0;           // SLURM_GPUS_ON_NODE; 0 = no GPU allocated
  int64_t mem_per_node_mb = 0;     // SLURM_MEM_PER_NODE in MB; 0 = not given
};

// Reads the allocation from `env` (name -> value). kFailedPrecondition when SLURM_JOB_ID is unset
// (not inside an allocation: the message says to submit with sbatch or run under salloc);
// kInvalidArgument naming the variable when one is malformed or the node list is missing.
Result<SlurmAllocation> read_slurm_allocation(const std::map<std::string, std::string>& env);

// This process's environment as a map (for read_slurm_allocation).
std::map<std::string, std::string> process_environment();

// Expands a Slurm host list: "vm" -> {vm}; "node[01-03,7],gpu5" -> {node01, node02, node03,
// node7, gpu5}; several bracket groups multiply ("r[1-2]n[1-2]" -> r1n1, r1n2, r2n1, r2n2). A
// range keeps the zero padding of its first number. kInvalidArgument naming the text when it is
// empty or malformed (unbalanced brackets, a reversed or non-numeric range).
Result<std::vector<std::string>> expand_hostlist(const std::string& text);

// The default number of workers: on CUDA with GPUs allocated, one per GPU of every node;
// otherwise SLURM_NTASKS when given, else one per node.
int default_slurm_workers(const SlurmAllocation& allocation, bool cuda);

// How one worker's step is asked for.
struct SrunStepOptions {
  std::string srun;       // the srun program (a path)
  int worker = 0;         // 0-based index: its node is nodes[worker % nodes.size()]
  int workers = 1;        // the run's workers, to share a node's CPUs and memory among them
  int cpus_per_task = 1;  // --cpus-per-task
  bool gpu = false;       // --gpus-per-task=1
  std::vector<std::string> extra_args;  // the user's --srun-arg entries, appended as they are
};

// The workers that share one node (the most of any node, with round-robin placement).
int workers_per_node(const SlurmAllocation& allocation, int workers);

// CPUs each worker step asks for: the node's CPUs shared by workers_per_node(), at least 1.
int slurm_cpus_per_worker(const SlurmAllocation& allocation, int workers);

// The command that runs a worker as a step, to put before the worker's own argv:
//   srun --nodes=1 --ntasks=1 --exact --nodelist=NODE --cpus-per-task=C [--gpus-per-task=1]
//        [--mem=<mem_per_node / workers_per_node>M] --job-name=fedtail-worker-I [extra_args...]
// The allocation must have at least one node (read_slurm_allocation ensures it).
std::vector<std::string> srun_step_command(const SlurmAllocation& allocation,
                                           const SrunStepOptions& options);

// The path of `program` found on PATH (as in `env`), or kNotFound naming it.
Result<std::string> find_on_path(const std::string& program,
                                 const std::map<std::string, std::string>& env);

}  // namespace fedtail::simulation

#endif  // FEDTAIL_SIMULATIONS_SLURM_H_
