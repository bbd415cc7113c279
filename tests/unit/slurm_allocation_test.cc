// simulations/slurm.h: host lists, the allocation read from the environment, worker placement and
// the srun command of a worker step.
#include "simulations/slurm.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace fedtail::simulation {
namespace {

using Strings = std::vector<std::string>;

TEST(SlurmHostlist, ExpandsRangesPaddingAndGroups) {
  EXPECT_EQ(*expand_hostlist("vm"), Strings({"vm"}));
  EXPECT_EQ(*expand_hostlist("node[01-03,7],gpu5"),
            Strings({"node01", "node02", "node03", "node7", "gpu5"}));
  EXPECT_EQ(*expand_hostlist("r[1-2]n[8-9]"), Strings({"r1n8", "r1n9", "r2n8", "r2n9"}));
  EXPECT_EQ(*expand_hostlist("a[098-101]-ib"),
            Strings({"a098-ib", "a099-ib", "a100-ib", "a101-ib"}));
}

TEST(SlurmHostlist, RejectsMalformedLists) {
  for (const char* bad : {"", "node[1-3", "node1-3]", "node[3-1]", "node[a-b]", "a,,b", "n[]"}) {
    Result<Strings> hosts = expand_hostlist(bad);
    ASSERT_FALSE(hosts.ok()) << bad;
    EXPECT_EQ(hosts.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(hosts.status().message().find("host list"), std::string::npos) << bad;
  }
}

TEST(SlurmAllocation, OutsideAnAllocationSaysHowToSubmit) {
  Result<SlurmAllocation> allocation = read_slurm_allocation({{"PATH", "/usr/bin"}});
  ASSERT_FALSE(allocation.ok());
  EXPECT_EQ(allocation.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(allocation.status().message().find("sbatch"), std::string::npos);
  EXPECT_NE(allocation.status().message().find("SLURM_JOB_ID"), std::string::npos);
}

TEST(SlurmAllocation, ReadsTheBatchEnvironment) {
  const std::map<std::string, std::string> env = {
      {"SLURM_JOB_ID", "812"},        {"SLURM_JOB_NODELIST", "gpu[1-2]"},
      {"SLURMD_NODENAME", "gpu1"},    {"SLURM_CPUS_ON_NODE", "32"},
      {"SLURM_NTASKS", "8"},          {"SLURM_GPUS_ON_NODE", "4"},
      {"SLURM_MEM_PER_NODE", "64000"}};
  Result<SlurmAllocation> allocation = read_slurm_allocation(env);
  ASSERT_TRUE(allocation.ok()) << allocation.status().to_string();
  EXPECT_EQ(allocation->job_id, "812");
  EXPECT_EQ(allocation->nodes, Strings({"gpu1", "gpu2"}));
  EXPECT_EQ(allocation->this_node, "gpu1");
  EXPECT_EQ(allocation->cpus_on_node, 32);
  EXPECT_EQ(allocation->ntasks, 8);
  EXPECT_EQ(allocation->gpus_per_node, 4);
  EXPECT_EQ(allocation->mem_per_node_mb, 64000);
  EXPECT_EQ(default_slurm_workers(*allocation, /*cuda=*/true), 8);   // one per GPU
  EXPECT_EQ(default_slurm_workers(*allocation, /*cuda=*/false), 8);  // SLURM_NTASKS
}

TEST(SlurmAllocation, NamesAMalformedVariable) {
  Result<SlurmAllocation> allocation = read_slurm_allocation(
      {{"SLURM_JOB_ID", "5"}, {"SLURM_JOB_NODELIST", "vm"}, {"SLURM_CPUS_ON_NODE", "2(x3)"}});
  ASSERT_FALSE(allocation.ok());
  EXPECT_EQ(allocation.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(allocation.status().message().find("SLURM_CPUS_ON_NODE"), std::string::npos);

  allocation = read_slurm_allocation({{"SLURM_JOB_ID", "5"}});
  ASSERT_FALSE(allocation.ok());
  EXPECT_NE(allocation.status().message().find("SLURM_JOB_NODELIST"), std::string::npos);
}

TEST(SlurmAllocation, DefaultsWithoutTasksOrGpus) {
  Result<SlurmAllocation> allocation =
      read_slurm_allocation({{"SLURM_JOB_ID", "5"}, {"SLURM_NODELIST", "n[1-3]"}});
  ASSERT_TRUE(allocation.ok()) << allocation.status().to_string();
  EXPECT_EQ(allocation->cpus_on_node, 1);
  EXPECT_EQ(allocation->gpus_per_node, 0);
  EXPECT_EQ(default_slurm_workers(*allocation, /*cuda=*/true), 3);  // one per node
  EXPECT_EQ(default_slurm_workers(*allocation, /*cuda=*/false), 3);
}

TEST(SlurmSteps, SpreadsWorkersOverNodesAndSharesTheirCpus) {
  SlurmAllocation allocation;
  allocation.job_id = "9";
  allocation.nodes = {"a", "b"};
  allocation.cpus_on_node = 16;
  EXPECT_EQ(workers_per_node(allocation, 5), 3);
  EXPECT_EQ(slurm_cpus_per_worker(allocation, 5), 5);
  EXPECT_EQ(slurm_cpus_per_worker(allocation, 64), 1);

  SrunStepOptions step;
  step.srun = "/usr/bin/srun";
  step.workers = 4;
  step.cpus_per_task = 8;
  step.worker = 3;
  EXPECT_EQ(srun_step_command(allocation, step),
            Strings({"/usr/bin/srun", "--nodes=1", "--ntasks=1", "--exact", "--nodelist=b",
                     "--cpus-per-task=8", "--job-name=fedtail-worker-3"}));

  allocation.mem_per_node_mb = 1000;
  step.worker = 2;
  step.gpu = true;
  step.extra_args = {"--constraint=a100"};
  EXPECT_EQ(srun_step_command(allocation, step),
            Strings({"/usr/bin/srun", "--nodes=1", "--ntasks=1", "--exact", "--nodelist=a",
                     "--cpus-per-task=8", "--gpus-per-task=1", "--mem=500M",
                     "--job-name=fedtail-worker-2", "--constraint=a100"}));
}

TEST(SlurmSteps, FindsProgramsOnPath) {
  Result<std::string> sh = find_on_path("sh", {{"PATH", "/nonexistent:/bin:/usr/bin"}});
  ASSERT_TRUE(sh.ok()) << sh.status().to_string();
  EXPECT_EQ(*sh, "/bin/sh");
  Result<std::string> missing = find_on_path("no-such-program-here", {{"PATH", "/bin"}});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("no-such-program-here"), std::string::npos);
}

}  // namespace
}  // namespace fedtail::simulation
