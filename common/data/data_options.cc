#include "common/data/data_options.h"

#include <cmath>
#include <cstdio>

#include "common/base/json_reader.h"

namespace fedtail {
namespace {

// The most clients a partition may have: far above any simulation, low enough to catch typos.
constexpr int kMaxClients = 1000000;

std::string format_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

}  // namespace

const std::vector<std::string>& known_datasets() {
  static const std::vector<std::string> kDatasets = {"fashion-mnist", "cifar10", "cifar100",
                                                     "folder"};
  return kDatasets;
}

int builtin_num_classes(const std::string& dataset) {
  if (dataset == "fashion-mnist" || dataset == "cifar10") return 10;
  if (dataset == "cifar100") return 100;
  return 0;
}

Result<DataOptions> parse_data_options(const nlohmann::json& j, const std::string& path) {
  DataOptions o;
  JsonReader r(j, path);
  r.read_enum("dataset", &o.dataset, known_datasets());
  r.read("root", &o.root);
  r.read("imbalance_factor", &o.imbalance_factor);
  r.read_enum("partition", &o.partition, {"dirichlet", "pathological", "iid"});
  r.read("alpha", &o.alpha);
  r.read("classes_per_client", &o.classes_per_client);
  r.read("clients", &o.clients);
  r.read("min_client_size", &o.min_client_size);
  r.read("max_examples_per_class", &o.max_examples_per_class);
  r.read("validation_per_class", &o.validation_per_class);
  r.read("auxiliary_per_class", &o.auxiliary_per_class);

  r.check(std::isfinite(o.imbalance_factor) && o.imbalance_factor >= 1.0, "imbalance_factor",
          "must be >= 1 (got " + format_number(o.imbalance_factor) + ")");
  r.check(std::isfinite(o.alpha) && o.alpha > 0.0, "alpha",
          "must be > 0 (got " + format_number(o.alpha) + ")");
  r.check(o.clients >= 1 && o.clients <= kMaxClients, "clients",
          "must be in [1, " + std::to_string(kMaxClients) + "] (got " + std::to_string(o.clients) +
              ")");
  const int k = builtin_num_classes(o.dataset);
  r.check(o.classes_per_client >= 1 && (k == 0 || o.classes_per_client <= k), "classes_per_client",
          (k == 0 ? std::string("must be >= 1") : "must be in [1, " + std::to_string(k) + "]") +
              " (got " + std::to_string(o.classes_per_client) + ")");
  r.check(o.min_client_size >= 0, "min_client_size",
          "must be >= 0 (got " + std::to_string(o.min_client_size) + ")");
  r.check(o.max_examples_per_class >= 0, "max_examples_per_class",
          "must be >= 0 (got " + std::to_string(o.max_examples_per_class) + ")");
  r.check(o.validation_per_class >= 0, "validation_per_class",
          "must be >= 0 (got " + std::to_string(o.validation_per_class) + ")");
  r.check(o.auxiliary_per_class >= 0, "auxiliary_per_class",
          "must be >= 0 (got " + std::to_string(o.auxiliary_per_class) + ")");
  r.check(o.dataset != "folder" || !o.root.empty(), "root", "required for dataset \"folder\"");
  FEDTAIL_RETURN_IF_ERROR(r.finish());
  return o;
}

nlohmann::json data_options_to_json(const DataOptions& o) {
  nlohmann::json j{{"dataset", o.dataset},
                   {"root", o.root},
                   {"imbalance_factor", o.imbalance_factor},
                   {"partition", o.partition},
                   {"alpha", o.alpha},
                   {"classes_per_client", o.classes_per_client},
                   {"clients", o.clients},
                   {"min_client_size", o.min_client_size},
                   {"max_examples_per_class", o.max_examples_per_class},
                   {"validation_per_class", o.validation_per_class}};
  // Written only when set, so that configs written before the key existed read back unchanged.
  if (o.auxiliary_per_class > 0) j["auxiliary_per_class"] = o.auxiliary_per_class;
  return j;
}

}  // namespace fedtail
