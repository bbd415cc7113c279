// fedtail-train: trains one model locally (no federation) on the data set a run config describes
// and reports its accuracy overall, per class and by Many/Medium/Few class group. It is the
// centralised (or single-client) baseline of a Fed-LT comparison, and the README demo until the
// federated one.
//
//   fedtail-train --config run.json [--device auto|cpu|cuda[:i]] [--threads N] [--epochs N]
//                 [--seed S] [--client K] [--json] [--log-level info]

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "common/base/logging.h"
#include "common/base/malloc_tuning.h"
#include "common/data/federated_data.h"
#include "common/learning/device.h"
#include "common/learning/metrics.h"
#include "common/learning/model_options.h"
#include "common/learning/models.h"
#include "common/learning/run_config.h"
#include "common/learning/train_loop.h"

namespace fedtail {
namespace {

struct Flags {
  std::string config_path;
  std::string device;
  int threads = -1;
  int epochs = 0;
  int64_t seed = -1;
  int client = -1;
  bool json = false;
  std::string log_level = "info";
};

std::string percent(double fraction) {
  if (std::isnan(fraction)) return "   -  ";
  char buffer[16];
  std::snprintf(buffer, sizeof(buffer), "%5.1f%%", 100.0 * fraction);
  return buffer;
}

std::string join_classes(const std::vector<int>& classes) {
  std::string out;
  for (int c : classes) out += (out.empty() ? "" : ",") + std::to_string(c);
  return out.empty() ? "-" : out;
}

void print_report(const AccuracyReport& cumulative, const AccuracyReport& threshold,
                  const std::vector<int64_t>& train_counts, const std::vector<std::string>& names) {
  std::printf("\nclass  name                 train   test-acc  group\n");
  for (size_t c = 0; c < cumulative.per_class.size(); ++c) {
    const char* group = "few";
    for (int m : cumulative.groups.many)
      if (m == static_cast<int>(c)) group = "many";
    for (int m : cumulative.groups.medium)
      if (m == static_cast<int>(c)) group = "medium";
    std::printf("%5zu  %-18s %7lld   %s   %s\n", c, c < names.size() ? names[c].c_str() : "",
                static_cast<long long>(train_counts[c]), percent(cumulative.per_class[c]).c_str(),
                group);
  }
  std::printf("\n%-40s %8s %8s %8s %8s\n", "accuracy", "overall", "many", "medium", "few");
  std::printf("%-40s %8s %8s %8s %8s\n", "groups by cumulative share (75%/20%/5%)",
              percent(cumulative.overall).c_str(), percent(cumulative.many).c_str(),
              percent(cumulative.medium).c_str(), percent(cumulative.few).c_str());
  std::printf("%-40s %8s %8s %8s %8s\n", "groups by count (>100 / 20-100 / <20)",
              percent(threshold.overall).c_str(), percent(threshold.many).c_str(),
              percent(threshold.medium).c_str(), percent(threshold.few).c_str());
  std::printf("  cumulative rule: many {%s}, medium {%s}, few {%s}\n",
              join_classes(cumulative.groups.many).c_str(),
              join_classes(cumulative.groups.medium).c_str(),
              join_classes(cumulative.groups.few).c_str());
  std::printf("  count rule:      many {%s}, medium {%s}, few {%s}\n",
              join_classes(threshold.groups.many).c_str(),
              join_classes(threshold.groups.medium).c_str(),
              join_classes(threshold.groups.few).c_str());
}

Status run(const Flags& flags) {
  FEDTAIL_ASSIGN_OR_RETURN(RunConfig config, load_run_config(flags.config_path));
  if (!flags.device.empty()) config.device = flags.device;
  if (flags.threads >= 0) config.threads = flags.threads;
  if (flags.epochs > 0) config.local.epochs = flags.epochs;
  if (flags.seed >= 0) config.seed = static_cast<uint64_t>(flags.seed);

  set_num_threads(config.threads);
  FEDTAIL_ASSIGN_OR_RETURN(torch::Device device, parse_device(config.device));
  spdlog::info("device {}, {} threads, seed {}", device_name(device), torch::get_num_threads(),
               config.seed);

  const auto load_start = std::chrono::steady_clock::now();
  FEDTAIL_ASSIGN_OR_RETURN(FederatedData data, build_federated_data(config.data, config.seed));
  Dataset train = data.train;
  std::string scope = "the whole long-tailed training set";
  if (flags.client >= 0) {
    if (flags.client >= data.num_clients()) {
      return Status::InvalidArgument(
          "--client: must be < config.data.clients = " + std::to_string(data.num_clients()) +
          " (got " + std::to_string(flags.client) + ")");
    }
    train = data.client_train_set(flags.client);
    scope = "client " + std::to_string(flags.client) + "'s partition";
  }
  spdlog::info(
      "data: {} train examples ({}), {} test examples, loaded in {:.1f} s", train.size(), scope,
      data.test.size(),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count());

  FEDTAIL_RETURN_IF_ERROR(fill_model_options_from_data(data.train, &config.model));
  Rng init_rng = Rng::derive(config.seed, "model_init");
  FEDTAIL_ASSIGN_OR_RETURN(Model model, make_model(config.model, init_rng));
  model->to(device);
  spdlog::info("model {} ({} parameters, feature_dim {})", config.model.arch,
               count_parameters(*model), model->feature_dim());

  const ClassGroups cumulative_groups = groups_by_cumulative_share(data.train_class_counts);
  const ClassGroups threshold_groups = groups_by_threshold(data.train_class_counts);
  auto evaluate = [&]() -> Result<std::pair<AccuracyReport, AccuracyReport>> {
    FEDTAIL_ASSIGN_OR_RETURN(
        torch::Tensor predictions,
        predict(model, data.test, config.local.augment, device, config.eval.batch_size));
    FEDTAIL_ASSIGN_OR_RETURN(
        AccuracyReport a,
        accuracy_report(predictions, data.test.labels, data.num_classes(), cumulative_groups));
    FEDTAIL_ASSIGN_OR_RETURN(
        AccuracyReport b,
        accuracy_report(predictions, data.test.labels, data.num_classes(), threshold_groups));
    return std::make_pair(std::move(a), std::move(b));
  };

  // One call per epoch, so progress shows; a fresh Rng stream per epoch keeps runs reproducible.
  LocalTrainOptions epoch_options = config.local;
  epoch_options.epochs = 1;
  nlohmann::json history = nlohmann::json::array();
  double train_seconds = 0;
  std::pair<AccuracyReport, AccuracyReport> reports;
  for (int epoch = 1; epoch <= config.local.epochs; ++epoch) {
    Rng rng = Rng::derive(config.seed, "local_train", {static_cast<uint64_t>(epoch)});
    FEDTAIL_ASSIGN_OR_RETURN(TrainStats stats,
                             train_local(model, train, epoch_options, device, rng));
    train_seconds += stats.seconds;
    FEDTAIL_ASSIGN_OR_RETURN(reports, evaluate());
    spdlog::info(
        "epoch {}/{}: loss {:.4f}, {:.0f} images/s, test accuracy {:.2f}% (many {:.1f}%, "
        "medium {:.1f}%, few {:.1f}%)",
        epoch, config.local.epochs, stats.mean_loss, stats.examples / stats.seconds,
        100 * reports.first.overall, 100 * reports.first.many, 100 * reports.first.medium,
        100 * reports.first.few);
    history.push_back({{"epoch", epoch},
                       {"loss", stats.mean_loss},
                       {"seconds", stats.seconds},
                       {"accuracy", reports.first.overall}});
  }

  if (flags.json) {
    nlohmann::json out = {{"config", flags.config_path},
                          {"seed", config.seed},
                          {"device", device_name(device)},
                          {"train_examples", train.size()},
                          {"train_class_counts", data.train_class_counts},
                          {"train_seconds", train_seconds},
                          {"history", history},
                          {"accuracy", reports.first.to_json()},
                          {"accuracy_by_count_rule", reports.second.to_json()}};
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    std::printf("\nfedtail-train: %s on %s (%s, imbalance factor %g), %d epochs, %.1f s training\n",
                config.model.arch.c_str(), config.data.dataset.c_str(), scope.c_str(),
                config.data.imbalance_factor, config.local.epochs, train_seconds);
    print_report(reports.first, reports.second, data.train_class_counts, data.train.class_names);
  }
  return Status::OK();
}

}  // namespace
}  // namespace fedtail

int main(int argc, char** argv) {
  fedtail::tune_malloc();  // first: before any thread or large allocation
  fedtail::Flags flags;
  CLI::App app{
      "fedtail-train: train one model locally on a (long-tailed) data set and report "
      "accuracy overall and by Many/Medium/Few class group"};
  app.set_version_flag("--version", std::string("fedtail-train ") + FEDTAIL_VERSION);
  app.add_option("--config", flags.config_path, "run config (JSON): data, model, local, eval")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--device", flags.device, "auto | cpu | cuda | cuda:i (overrides config.device)");
  app.add_option("--threads", flags.threads, "LibTorch threads, 0 = all cores (overrides config)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--epochs", flags.epochs, "epochs (overrides config.local.epochs)")
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", flags.seed, "run seed (overrides config.seed)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--client", flags.client,
                 "train on this client's partition only (default: the whole training set)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--json", flags.json, "print the results as JSON");
  app.add_option("--log-level", flags.log_level, "trace | debug | info | warn | error | off");
  CLI11_PARSE(app, argc, argv);

  fedtail::Status status = fedtail::init_logging("fedtail-train", flags.log_level);
  if (status.ok()) status = fedtail::run(flags);
  if (!status.ok()) {
    std::fprintf(stderr, "fedtail-train: %s\n", status.to_string().c_str());
    return 1;
  }
  return 0;
}
