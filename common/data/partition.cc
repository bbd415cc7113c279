#include "common/data/partition.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>

namespace fedtail {
namespace {

// Draws before partition_dirichlet gives up on min_client_size.
constexpr int kMaxDirichletDraws = 100;

Status check_labels(const std::vector<int64_t>& labels, int num_classes) {
  if (num_classes < 1) return Status::InvalidArgument("num_classes: must be >= 1");
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= num_classes) {
      return Status::InvalidArgument("label " + std::to_string(labels[i]) + " at index " +
                                     std::to_string(i) + " is not in [0, " +
                                     std::to_string(num_classes) + ")");
    }
  }
  return Status::OK();
}

Status check_clients(int num_clients) {
  if (num_clients < 1) {
    return Status::InvalidArgument("clients: must be >= 1 (got " + std::to_string(num_clients) +
                                   ")");
  }
  return Status::OK();
}

std::string format_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

std::vector<std::vector<int64_t>> indices_by_class(const std::vector<int64_t>& labels,
                                                   int num_classes) {
  std::vector<std::vector<int64_t>> by_class(num_classes);
  for (size_t i = 0; i < labels.size(); ++i) by_class[labels[i]].push_back(static_cast<int64_t>(i));
  return by_class;
}

// The smallest client, for error messages: {client, size}.
std::pair<int, int64_t> smallest_client(const Partition& p) {
  int best = 0;
  for (size_t k = 1; k < p.size(); ++k) {
    if (p[k].size() < p[best].size()) best = static_cast<int>(k);
  }
  return {best, static_cast<int64_t>(p[best].size())};
}

Status check_min_size(const Partition& p, int64_t min_client_size, const char* what) {
  auto [client, size] = smallest_client(p);
  if (size < min_client_size) {
    return Status::FailedPrecondition(std::string(what) + ": client " + std::to_string(client) +
                                      " gets " + std::to_string(size) +
                                      " examples, fewer than min_client_size " +
                                      std::to_string(min_client_size) + "; use fewer clients");
  }
  return Status::OK();
}

void sort_each(Partition* p) {
  for (auto& indices : *p) std::sort(indices.begin(), indices.end());
}

}  // namespace

Result<Partition> partition_dirichlet(const std::vector<int64_t>& labels, int num_classes,
                                      int num_clients, double alpha, int64_t min_client_size,
                                      Rng& rng) {
  FEDTAIL_RETURN_IF_ERROR(check_clients(num_clients));
  FEDTAIL_RETURN_IF_ERROR(check_labels(labels, num_classes));
  if (!(alpha > 0) || !std::isfinite(alpha)) {
    return Status::InvalidArgument("alpha: must be > 0 (got " + format_number(alpha) + ")");
  }
  const int64_t total = static_cast<int64_t>(labels.size());
  if (total < static_cast<int64_t>(num_clients) * min_client_size) {
    return Status::FailedPrecondition("dirichlet partition: " + std::to_string(total) +
                                      " examples cannot give " + std::to_string(num_clients) +
                                      " clients " + std::to_string(min_client_size) +
                                      " examples each (min_client_size)");
  }
  const auto by_class = indices_by_class(labels, num_classes);
  std::vector<double> cumulative(num_clients);
  int64_t smallest = 0;
  for (int draw = 0; draw < kMaxDirichletDraws; ++draw) {
    Partition p(num_clients);
    for (int c = 0; c < num_classes; ++c) {
      std::vector<int64_t> members = by_class[c];
      rng.shuffle(members);
      const std::vector<double> weights = rng.dirichlet(alpha, num_clients);
      std::partial_sum(weights.begin(), weights.end(), cumulative.begin());
      const double sum = cumulative.back();
      int last_positive = num_clients - 1;
      while (last_positive > 0 && weights[last_positive] <= 0) --last_positive;
      for (int64_t index : members) {
        // A categorical draw from `weights` by binary search over the cumulative sums: the first
        // client whose cumulative weight exceeds u·sum (zero-weight clients are never chosen).
        const double u = rng.uniform() * sum;
        auto it = std::upper_bound(cumulative.begin(), cumulative.end(), u);
        int k = static_cast<int>(it - cumulative.begin());
        if (k > last_positive) k = last_positive;  // rounding at the very top
        p[k].push_back(index);
      }
    }
    smallest = smallest_client(p).second;
    if (smallest >= min_client_size) {
      sort_each(&p);
      return p;
    }
  }
  return Status::FailedPrecondition(
      "dirichlet partition: after " + std::to_string(kMaxDirichletDraws) +
      " draws a client still had fewer than min_client_size " + std::to_string(min_client_size) +
      " examples (last draw's smallest client: " + std::to_string(smallest) + "; " +
      std::to_string(total) + " examples, " + std::to_string(num_clients) + " clients, alpha " +
      format_number(alpha) +
      "); use fewer clients, a larger alpha or a "
      "smaller min_client_size");
}

Result<Partition> partition_pathological(const std::vector<int64_t>& labels, int num_classes,
                                         int num_clients, int shards_per_client,
                                         int64_t min_client_size, Rng& rng) {
  FEDTAIL_RETURN_IF_ERROR(check_clients(num_clients));
  FEDTAIL_RETURN_IF_ERROR(check_labels(labels, num_classes));
  if (shards_per_client < 1 || shards_per_client > num_classes) {
    return Status::InvalidArgument("classes_per_client: must be in [1, " +
                                   std::to_string(num_classes) + "] (got " +
                                   std::to_string(shards_per_client) + ")");
  }
  const int64_t total = static_cast<int64_t>(labels.size());
  const int64_t shards = static_cast<int64_t>(num_clients) * shards_per_client;
  if (total < shards) {
    return Status::FailedPrecondition("pathological partition: " + std::to_string(total) +
                                      " examples cannot fill " + std::to_string(shards) +
                                      " shards (clients x classes_per_client)");
  }
  // Sorted by label; within a class in random order, so a shard is a random sample of its class.
  std::vector<int64_t> order;
  order.reserve(labels.size());
  for (auto& members : indices_by_class(labels, num_classes)) {
    rng.shuffle(members);
    order.insert(order.end(), members.begin(), members.end());
  }
  std::vector<int64_t> shard_ids(shards);
  std::iota(shard_ids.begin(), shard_ids.end(), 0);
  rng.shuffle(shard_ids);
  Partition p(num_clients);
  for (int k = 0; k < num_clients; ++k) {
    for (int s = 0; s < shards_per_client; ++s) {
      const int64_t shard = shard_ids[static_cast<int64_t>(k) * shards_per_client + s];
      const int64_t begin = shard * total / shards, end = (shard + 1) * total / shards;
      p[k].insert(p[k].end(), order.begin() + begin, order.begin() + end);
    }
  }
  sort_each(&p);
  FEDTAIL_RETURN_IF_ERROR(check_min_size(p, min_client_size, "pathological partition"));
  return p;
}

Result<Partition> partition_iid(const std::vector<int64_t>& labels, int num_clients,
                                int64_t min_client_size, Rng& rng) {
  FEDTAIL_RETURN_IF_ERROR(check_clients(num_clients));
  const int64_t total = static_cast<int64_t>(labels.size());
  std::vector<int64_t> order(labels.size());
  std::iota(order.begin(), order.end(), 0);
  rng.shuffle(order);
  Partition p(num_clients);
  for (int64_t k = 0; k < num_clients; ++k) {
    const int64_t begin = k * total / num_clients, end = (k + 1) * total / num_clients;
    p[k].assign(order.begin() + begin, order.begin() + end);
  }
  sort_each(&p);
  FEDTAIL_RETURN_IF_ERROR(check_min_size(p, min_client_size, "iid partition"));
  return p;
}

Result<Partition> partition_labels(const std::vector<int64_t>& labels, int num_classes,
                                   const DataOptions& options, Rng& rng) {
  Result<Partition> result = Status::InvalidArgument(
      "unknown partition \"" + options.partition + "\" (expected dirichlet, pathological or iid)");
  if (options.partition == "dirichlet") {
    result = partition_dirichlet(labels, num_classes, options.clients, options.alpha,
                                 options.min_client_size, rng);
  } else if (options.partition == "pathological") {
    result = partition_pathological(labels, num_classes, options.clients,
                                    options.classes_per_client, options.min_client_size, rng);
  } else if (options.partition == "iid") {
    result = partition_iid(labels, options.clients, options.min_client_size, rng);
  }
  if (!result.ok()) return result.status().with_context("data.partition");
  return result;
}

std::vector<std::vector<int64_t>> partition_class_counts(const Partition& partition,
                                                         const std::vector<int64_t>& labels,
                                                         int num_classes) {
  std::vector<std::vector<int64_t>> counts(partition.size(), std::vector<int64_t>(num_classes, 0));
  for (size_t k = 0; k < partition.size(); ++k) {
    for (int64_t i : partition[k]) ++counts[k][labels[i]];
  }
  return counts;
}

Result<Partition> personalised_test_indices(
    const std::vector<std::vector<int64_t>>& client_train_counts, int64_t total_train,
    const std::vector<int64_t>& test_labels, int num_classes, Rng& rng) {
  FEDTAIL_RETURN_IF_ERROR(check_labels(test_labels, num_classes));
  if (total_train < 1) {
    return Status::InvalidArgument("total_train: must be >= 1 (got " + std::to_string(total_train) +
                                   ")");
  }
  const auto pools = indices_by_class(test_labels, num_classes);
  const int64_t n_test = static_cast<int64_t>(test_labels.size());
  Partition out(client_train_counts.size());
  for (size_t k = 0; k < client_train_counts.size(); ++k) {
    const auto& counts = client_train_counts[k];
    if (static_cast<int>(counts.size()) != num_classes) {
      return Status::InvalidArgument("client_train_counts[" + std::to_string(k) + "]: has " +
                                     std::to_string(counts.size()) + " classes, expected " +
                                     std::to_string(num_classes));
    }
    for (int j = 0; j < num_classes; ++j) {
      if (counts[j] < 0) {
        return Status::InvalidArgument("client_train_counts[" + std::to_string(k) + "][" +
                                       std::to_string(j) + "]: negative count");
      }
      // floor(n_kj / N_train · N_test) in integers: exact where FedLoGe's int() of the float
      // expression may round an exact quotient down by one.
      int64_t product = 0;
      const int64_t want =
          __builtin_mul_overflow(counts[j], n_test, &product)
              ? static_cast<int64_t>(static_cast<long double>(counts[j]) * n_test / total_train)
              : product / total_train;
      const auto& pool = pools[j];
      const int64_t take = std::min<int64_t>(want, static_cast<int64_t>(pool.size()));
      if (take <= 0) continue;
      for (int64_t p : rng.sample_without_replacement(static_cast<int64_t>(pool.size()), take)) {
        out[k].push_back(pool[p]);
      }
    }
    std::sort(out[k].begin(), out[k].end());
  }
  return out;
}

}  // namespace fedtail
