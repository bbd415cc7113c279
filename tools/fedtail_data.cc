// fedtail-data: shows the long-tailed training set and the client partition a data config produces.
//
//   fedtail-data --dataset fashion-mnist|cifar10|cifar100|folder [--root DIR] [--imbalance-factor
//   F]
//                [--partition dirichlet|pathological|iid] [--alpha A] [--classes-per-client K]
//                [--clients N] [--seed S] [--json]
//
// Prints per-class counts of the long-tailed train set (with each class's Many/Medium/Few group)
// and per-client class counts; --json prints one JSON object instead. Errors: one line on stderr,
// exit 1.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/logging.h"
#include "common/base/malloc_tuning.h"
#include "common/data/data_options.h"
#include "common/data/federated_data.h"
#include "common/data/long_tail.h"
#include "common/data/partition.h"

namespace fedtail {
namespace {

struct Flags {
  DataOptions data;
  uint64_t seed = 1;
  bool json = false;
};

int64_t sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

nlohmann::json to_json(const Flags& flags, const FederatedData& fd,
                       const std::vector<std::vector<int64_t>>& client_counts,
                       const std::vector<std::vector<int64_t>>& client_test_counts) {
  const auto groups = many_medium_few(fd.train_class_counts);
  nlohmann::json group_names = nlohmann::json::array();
  for (auto g : groups) group_names.push_back(class_group_name(g));
  std::vector<int64_t> client_sizes, client_test_sizes;
  for (const auto& row : client_counts) client_sizes.push_back(sum(row));
  for (const auto& row : client_test_counts) client_test_sizes.push_back(sum(row));
  return nlohmann::json{
      {"dataset", flags.data.dataset},
      {"root", flags.data.root},
      {"seed", flags.seed},
      {"imbalance_factor", flags.data.imbalance_factor},
      {"partition", flags.data.partition},
      {"alpha", flags.data.alpha},
      {"classes_per_client", flags.data.classes_per_client},
      {"num_clients", flags.data.clients},
      {"num_classes", fd.num_classes()},
      {"class_names", fd.train.class_names},
      {"classes", fd.train_class_counts},
      {"groups", group_names},
      {"train_size", fd.train.size()},
      {"test_classes", fd.test.class_counts()},
      {"test_size", fd.test.size()},
      {"clients", client_counts},
      {"client_sizes", client_sizes},
      {"client_test", client_test_counts},
      {"client_test_sizes", client_test_sizes},
  };
}

void print_table(const Flags& flags, const FederatedData& fd,
                 const std::vector<std::vector<int64_t>>& client_counts) {
  const auto& counts = fd.train_class_counts;
  const auto groups = many_medium_few(counts);
  const int k = fd.num_classes();
  std::printf("%s train set, imbalance factor %g: %lld examples in %d classes (test set: %lld)\n\n",
              flags.data.dataset.c_str(), flags.data.imbalance_factor,
              static_cast<long long>(fd.train.size()), k, static_cast<long long>(fd.test.size()));
  size_t name_width = 4;
  for (const auto& n : fd.train.class_names) name_width = std::max(name_width, n.size());
  std::printf("%5s  %-*s  %7s  %s\n", "class", static_cast<int>(name_width), "name", "count",
              "group");
  for (int c = 0; c < k; ++c) {
    std::printf("%5d  %-*s  %7lld  %s\n", c, static_cast<int>(name_width),
                fd.train.class_names[c].c_str(), static_cast<long long>(counts[c]),
                class_group_name(groups[c]));
  }
  std::printf(
      "(groups: classes by count, Many = the first 75%% of samples, Medium = the next 20%%, "
      "Few = the rest)\n\n");

  std::string how = flags.data.partition;
  if (flags.data.partition == "dirichlet") {
    char buf[64];
    std::snprintf(buf, sizeof(buf), " (alpha %g)", flags.data.alpha);
    how += buf;
  } else if (flags.data.partition == "pathological") {
    how += " (" + std::to_string(flags.data.classes_per_client) + " shards per client)";
  }
  std::printf("%s partition over %d clients, seed %llu: train examples per client and class\n\n",
              how.c_str(), fd.num_clients(), static_cast<unsigned long long>(flags.seed));
  int width = 4;
  for (int64_t c : counts) width = std::max(width, static_cast<int>(std::to_string(c).size()));
  std::printf("%6s", "client");
  for (int c = 0; c < k; ++c) std::printf(" %*s", width, ("c" + std::to_string(c)).c_str());
  std::printf(" %*s\n", width + 2, "total");
  std::vector<int64_t> column(k, 0);
  for (size_t i = 0; i < client_counts.size(); ++i) {
    std::printf("%6zu", i);
    for (int c = 0; c < k; ++c) {
      std::printf(" %*lld", width, static_cast<long long>(client_counts[i][c]));
      column[c] += client_counts[i][c];
    }
    std::printf(" %*lld\n", width + 2, static_cast<long long>(sum(client_counts[i])));
  }
  std::printf("%6s", "total");
  for (int c = 0; c < k; ++c) std::printf(" %*lld", width, static_cast<long long>(column[c]));
  std::printf(" %*lld\n", width + 2, static_cast<long long>(sum(column)));
}

// Prints the error on one line, naming the flag where the message names a "data.<field>".
int fail(const Status& status) {
  std::string message = status.message();
  const std::string prefix = "data.";
  const size_t colon = message.find(':');
  if (message.compare(0, prefix.size(), prefix) == 0 && colon != std::string::npos) {
    std::string flag = message.substr(prefix.size(), colon - prefix.size());
    for (auto& ch : flag) ch = ch == '_' ? '-' : ch;
    message = "--" + flag + message.substr(colon);
  }
  std::fprintf(stderr, "fedtail-data: %s\n", message.c_str());
  return 1;
}

int run(const Flags& flags) {
  // Validate through the same parser a config file goes through, so both reject the same values.
  auto parsed = parse_data_options(data_options_to_json(flags.data), "data");
  if (!parsed.ok()) return fail(parsed.status());
  auto fd = build_federated_data(*parsed, flags.seed);
  if (!fd.ok()) return fail(fd.status());
  const auto client_counts = fd->client_train_class_counts();
  if (flags.json) {
    const auto client_test_counts =
        partition_class_counts(fd->client_test, fd->test.label_vector(), fd->num_classes());
    std::cout << to_json(flags, *fd, client_counts, client_test_counts)
                     .dump(/*indent=*/-1, ' ', /*ensure_ascii=*/false,
                           nlohmann::json::error_handler_t::replace)
              << "\n";
  } else {
    print_table(flags, *fd, client_counts);
  }
  return 0;
}

}  // namespace
}  // namespace fedtail

int main(int argc, char** argv) {
  fedtail::tune_malloc();  // first: before any thread or large allocation
  fedtail::Flags flags;
  CLI::App app{
      "fedtail-data: per-class counts of a long-tailed training set and its client partition"};
  app.set_version_flag("--version", FEDTAIL_VERSION);
  auto& d = flags.data;
  app.add_option("--dataset", d.dataset, "fashion-mnist, cifar10, cifar100 or folder")
      ->check(CLI::IsMember(fedtail::known_datasets()))
      ->capture_default_str();
  app.add_option("--root", d.root,
                 "dataset folder (default: /usr/share/datasets/fashion-mnist for fashion-mnist)");
  app.add_option("--imbalance-factor", d.imbalance_factor,
                 "largest / smallest class size of the train set (1 = keep it balanced)")
      ->capture_default_str();
  app.add_option("--partition", d.partition, "dirichlet, pathological or iid")
      ->check(CLI::IsMember({"dirichlet", "pathological", "iid"}))
      ->capture_default_str();
  app.add_option("--alpha", d.alpha, "Dirichlet concentration (partition dirichlet)")
      ->capture_default_str();
  app.add_option("--classes-per-client", d.classes_per_client,
                 "shards (about classes) per client (partition pathological)")
      ->capture_default_str();
  app.add_option("--clients", d.clients, "number of clients")->capture_default_str();
  app.add_option("--seed", flags.seed, "run seed")->capture_default_str();
  app.add_flag("--json", flags.json, "print one JSON object instead of tables");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "fedtail-data: %s (see --help)\n", e.what());
    return e.get_exit_code() != 0 ? e.get_exit_code() : 1;
  }
  if (auto s = fedtail::init_logging("fedtail-data"); !s.ok()) {
    std::fprintf(stderr, "fedtail-data: %s\n", s.message().c_str());
    return 1;
  }
  return fedtail::run(flags);
}
