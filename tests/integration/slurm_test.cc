// fedtail-sim on Slurm, for real: a one-node Slurm cluster on localhost
// (tools/slurm/local-cluster.sh: munged, slurmctld and slurmd in a temporary directory),
// tools/slurm/fedtail-sim.sbatch submitted to it with a tiny Fashion-MNIST config and two workers,
// and what the job left behind: the summary, TLS and join tokens on the transport, each worker an
// srun step. Skipped without root or without Debian's slurm-wlm and munge packages.
#include "simulations/slurm.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>
#include <thread>

#include "tests/support/cli.h"
#include "tests/support/process.h"
#include "tests/support/sim_configs.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using test_support::binary_path;
using test_support::read_file;
using test_support::run_cli;

const std::string kTools = std::string(FEDTAIL_SOURCE_DIR) + "/tools/slurm";

// Why the test cannot run here ("" when it can).
std::string missing_slurm_prerequisite() {
  if (::geteuid() != 0) return "needs root (slurmd launches the job's processes)";
  std::map<std::string, std::string> env = simulation::process_environment();
  env["PATH"] = env["PATH"] + ":/usr/sbin:/sbin:/usr/bin:/bin";
  for (const char* tool :
       {"munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "ss"}) {
    if (!simulation::find_on_path(tool, env).ok()) {
      return std::string(tool) + " not found (apt-get install slurm-wlm munge)";
    }
  }
  if (!fs::exists(binary_path("fedtail-sim"))) return binary_path("fedtail-sim") + " is not built";
  return test_support::missing_federation_prerequisite();
}

// The one-node cluster, stopped when the test ends, passed or not. Its directory is short (munge's
// socket path must fit 108 bytes), under /tmp.
class LocalCluster {
 public:
  LocalCluster() {
    char dir[] = "/tmp/fedtail-slurm-XXXXXX";
    if (::mkdtemp(dir) != nullptr) dir_ = dir;
  }
  ~LocalCluster() {
    if (started_) run_cli("bash", kTools + "/local-cluster.sh stop " + dir_);
    ::unsetenv("SLURM_CONF");
    if (!dir_.empty() && !::testing::Test::HasFailure()) fs::remove_all(dir_);
  }
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  // Starts it; "" on success, else what went wrong (the script's output and logs).
  std::string start() {
    if (dir_.empty()) return "mkdtemp failed";
    started_ = true;  // stop even a half-started cluster
    test_support::CliRun r = run_cli("bash", kTools + "/local-cluster.sh start " + dir_);
    if (r.exit_code != 0) {
      return "local-cluster.sh start: exit " + std::to_string(r.exit_code) + "\n" + r.out + r.err +
             read_file(dir_ + "/log/slurmctld.log") + read_file(dir_ + "/log/slurmd.log");
    }
    ::setenv("SLURM_CONF", (dir_ + "/slurm.conf").c_str(), /*overwrite=*/1);
    return "";
  }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  bool started_ = false;
};

// `key=value` of one `scontrol show job -o` line; "" when absent.
std::string job_field(const std::string& line, const std::string& key) {
  std::smatch match;
  if (std::regex_search(line, match, std::regex("(^| )" + key + "=([^ \n]*)"))) return match[2];
  return "";
}

// Polls the job until it leaves the queue's live states; returns its last `scontrol show job -o`
// line ("" when it could not be read), or the line of a job still running at the deadline.
std::string wait_for_job(const std::string& job_id, std::chrono::seconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  std::string line;
  for (;;) {
    line = run_cli("scontrol", "show job -o " + job_id).out;
    const std::string state = job_field(line, "JobState");
    const bool live = state == "PENDING" || state == "CONFIGURING" || state == "RUNNING" ||
                      state == "COMPLETING" || state.empty();
    if (!live || std::chrono::steady_clock::now() >= until) return line;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
}

TEST(SlurmSim, TwoWorkersAsSrunStepsOverTlsWithJoinTokens) {
  const std::string missing = missing_slurm_prerequisite();
  if (!missing.empty()) GTEST_SKIP() << missing;

  LocalCluster cluster;
  const std::string started = cluster.start();
  ASSERT_EQ(started, "");

  const std::string scratch = test_support::scratch_dir("slurm-sim");
  nlohmann::json config = test_support::tiny_sim_config(/*rounds=*/2);
  config["data"]["clients"] = 8;
  config["data"]["max_examples_per_class"] = 30;
  const std::string config_path = scratch + "/sim.json";
  test_support::write_file(config_path, config.dump(2));
  const std::string out = scratch + "/out";
  const std::string job_out = scratch + "/job.out";

  // As a user submits it, with the sbatch options this one-node, two-core cluster fits.
  test_support::CliRun submitted = run_cli(
      "sbatch",
      "--parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=5 --output=" + job_out +
          " --export=ALL,FEDTAIL_SIM=" + binary_path("fedtail-sim") + " " + kTools +
          "/fedtail-sim.sbatch " + config_path + " --out " + out + " --workers 2 --threads 1");
  ASSERT_EQ(submitted.exit_code, 0) << submitted.out << submitted.err;
  std::string job_id = submitted.out.substr(0, submitted.out.find_first_of(";\n"));
  ASSERT_FALSE(job_id.empty()) << submitted.out;

  const std::string job = wait_for_job(job_id, std::chrono::seconds(120));
  const std::string sim_log = read_file(out + "/sim.log");
  ASSERT_EQ(job_field(job, "JobState"), "COMPLETED") << job << "\njob output:\n"
                                                     << read_file(job_out) << "\nsim.log:\n"
                                                     << sim_log;
  EXPECT_EQ(job_field(job, "ExitCode"), "0:0") << job;

  // The report, as on one machine, naming the job.
  const nlohmann::json summary = nlohmann::json::parse(read_file(out + "/summary.json"));
  ASSERT_EQ(summary["runs"].size(), 1u) << summary.dump(2);
  const nlohmann::json& run = summary["runs"][0];
  EXPECT_EQ(run["status"], "completed");
  EXPECT_EQ(run["rounds_completed"], 2);
  EXPECT_EQ(summary["rounds_completed"], 2);
  EXPECT_EQ(summary["workers"], 2);
  EXPECT_TRUE(summary["final"]["generic_accuracy"].is_number()) << summary.dump(2);
  EXPECT_EQ(test_support::metrics_lines(out + "/metrics.jsonl").size(), 2u);
  ASSERT_TRUE(summary["slurm"].is_object()) << summary.dump(2);
  EXPECT_EQ(summary["slurm"]["job_id"], job_id);
  EXPECT_EQ(summary["slurm"]["transport"], "TLS, join tokens");
  const std::string md = read_file(out + "/summary.md");
  EXPECT_NE(md.find("| fedavg | generic |"), std::string::npos) << md;
  EXPECT_NE(md.find("Slurm job " + job_id), std::string::npos) << md;
  // The job's output (fedtail-sim's stdout) holds the table too.
  EXPECT_NE(read_file(job_out).find("| fedavg | generic |"), std::string::npos);

  // The coordinator listened off loopback with TLS and join tokens made for the run; its CA key
  // is gone once it signed.
  EXPECT_NE(sim_log.find("listening on 0.0.0.0:"), std::string::npos) << sim_log;
  EXPECT_NE(sim_log.find("(TLS, join tokens)"), std::string::npos) << sim_log;
  const std::string run_dir = out + "/" + run["run_dir"].get<std::string>();
  for (const char* file : {"ca.pem", "server.pem", "server.key", "token.secret"}) {
    EXPECT_TRUE(fs::exists(run_dir + "/tls/" + file)) << file;
  }
  EXPECT_FALSE(fs::exists(run_dir + "/tls/ca.key"));

  // Each worker was an srun step, dialed the node's name over TLS and joined with tokens.
  size_t steps_logged = 0;
  for (size_t at = sim_log.find("Slurm step `"); at != std::string::npos;
       at = sim_log.find("Slurm step `", at + 1)) {
    ++steps_logged;
  }
  EXPECT_EQ(steps_logged, 2u) << sim_log;
  EXPECT_NE(sim_log.find("--nodes=1 --ntasks=1 --exact"), std::string::npos) << sim_log;
  const std::string host = summary["slurm"]["coordinator_host"];
  for (int worker = 0; worker < 2; ++worker) {
    const std::string log =
        read_file(run_dir + "/workers/worker-" + std::to_string(worker) + ".log");
    EXPECT_NE(log.find("-> coordinator " + host + ":"), std::string::npos) << log;
    EXPECT_NE(log.find("(TLS)"), std::string::npos) << log;
    EXPECT_NE(log.find("joined coordinator"), std::string::npos) << log;
  }
  std::set<std::string> steps;  // slurmd's own record of the job's steps
  const std::string slurmd_log = read_file(cluster.dir() + "/log/slurmd.log");
  const std::regex launch("launch task StepId=" + job_id + "\\.([0-9]+) ");
  for (auto it = std::sregex_iterator(slurmd_log.begin(), slurmd_log.end(), launch);
       it != std::sregex_iterator(); ++it) {
    steps.insert((*it)[1]);
  }
  EXPECT_EQ(steps.size(), 2u) << slurmd_log;

  std::printf("--- summary.md of Slurm job %s (2 workers as srun steps) ---\n%s", job_id.c_str(),
              md.c_str());
  std::fflush(stdout);
}

}  // namespace
}  // namespace fedtail
