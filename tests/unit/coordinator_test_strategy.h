// A tiny ServerStrategy for the coordinator's tests: the global model is one float32 tensor "w";
// an update replaces it by the example-weighted mean of the clients' "w" (double sums, so arrival
// order does not matter); clients are sampled with the engine's Rng.
#ifndef FEDTAIL_TESTS_UNIT_COORDINATOR_TEST_STRATEGY_H_
#define FEDTAIL_TESTS_UNIT_COORDINATOR_TEST_STRATEGY_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/wire/bundle_checks.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/strategy.h"

namespace fedtail::coordinator::testing {

constexpr int kWidth = 4;

// What the strategy saw, for assertions (shared with the test; thread-safe).
struct StrategyLog {
  std::mutex mu;
  std::vector<std::string> added;                                // client ids, in arrival order
  std::vector<std::vector<strategies::ClientFailure>> failures;  // per finished round
  std::vector<std::vector<std::string>> selected;                // per configured round
  std::vector<std::vector<strategies::EvalReport>> reports;
};

class TestStrategy final : public strategies::ServerStrategy {
 public:
  // Selects ceil(fraction × available) clients (at least min_clients, else kFailedPrecondition).
  TestStrategy(std::shared_ptr<StrategyLog> log, double fraction = 1.0, int min_clients = 1)
      : log_(std::move(log)), fraction_(fraction), min_clients_(min_clients) {}

  Status initialize(const strategies::RunContext& /*run*/, Rng& rng) override {
    std::vector<float> values;
    for (int i = 0; i < kWidth; ++i) values.push_back(static_cast<float>(rng.uniform()));
    auto global = std::make_shared<TensorBundle>();
    FEDTAIL_RETURN_IF_ERROR(
        global->add(NamedTensor::from_values("w", DType::kFloat32, {kWidth}, values)));
    global_ = std::move(global);
    return Status::OK();
  }

  Result<std::vector<strategies::TaskSpec>> configure_fit(
      int round, const std::vector<strategies::ClientInfo>& available, Rng& rng) override {
    if (static_cast<int>(available.size()) < min_clients_) {
      return Status::FailedPrecondition("need " + std::to_string(min_clients_) + " clients");
    }
    int64_t take = static_cast<int64_t>(fraction_ * static_cast<double>(available.size()) + 0.999);
    take = std::max<int64_t>(take, min_clients_);
    std::vector<int64_t> picked =
        rng.sample_without_replacement(static_cast<int64_t>(available.size()), take);
    std::sort(picked.begin(), picked.end());
    std::vector<strategies::TaskSpec> specs;
    std::vector<std::string> ids;
    for (int64_t i : picked) {
      specs.push_back({available[i].id, {{"round", round}}, global_, nullptr});
      ids.push_back(available[i].id);
    }
    std::lock_guard<std::mutex> lock(log_->mu);
    log_->selected.push_back(ids);
    return specs;
  }

  Result<std::unique_ptr<strategies::Aggregation>> begin_aggregation(int /*round*/) override {
    return std::unique_ptr<strategies::Aggregation>(new Average(this));
  }

  Result<std::vector<strategies::TaskSpec>> configure_evaluate(
      int /*round*/, const std::vector<strategies::ClientInfo>& available, Rng& /*rng*/) override {
    std::vector<strategies::TaskSpec> specs;
    if (!evaluate_clients_) return specs;
    for (const auto& client : available) specs.push_back({client.id, {}, global_, nullptr});
    return specs;
  }

  Result<nlohmann::json> aggregate_evaluate(
      int /*round*/, const std::vector<strategies::EvalReport>& reports,
      const std::vector<strategies::ClientFailure>& failures) override {
    int64_t correct = 0, examples = 0;
    for (const auto& r : reports) {
      correct += r.metrics.value("correct", int64_t{0});
      examples += r.metrics.value("examples", int64_t{0});
    }
    std::lock_guard<std::mutex> lock(log_->mu);
    log_->reports.push_back(reports);
    nlohmann::json personalized = {{"mean", examples ? double(correct) / examples : 0.0},
                                   {"weighted", examples ? double(correct) / examples : 0.0}};
    return nlohmann::json{
        {"personalized", personalized}, {"reports", reports.size()}, {"failures", failures.size()}};
  }

  Result<nlohmann::json> evaluate(int /*round*/,
                                  const strategies::ServerEvalContext& /*context*/) override {
    return nlohmann::json::object();
  }

  std::shared_ptr<const TensorBundle> global_bundle() const override { return global_; }

  Result<TensorBundle> save_state() const override {
    TensorBundle state = global_->clone();
    state.mutable_metadata()["kind"] = "test";
    return state;
  }
  Status load_state(TensorBundle state) override {
    if (state.metadata().value("kind", "") != "test") return Status::InvalidArgument("not ours");
    state.mutable_metadata().erase("kind");
    global_ = std::make_shared<TensorBundle>(std::move(state));
    return Status::OK();
  }

  void set_evaluate_clients(bool on) { evaluate_clients_ = on; }

 private:
  class Average final : public strategies::Aggregation {
   public:
    explicit Average(TestStrategy* owner) : owner_(owner), sum_(kWidth, 0.0) {}
    Status add(strategies::ClientUpdate update) override {
      FEDTAIL_RETURN_IF_ERROR(check_compatible(update.bundle, *owner_->global_));
      const float* w = update.bundle.find("w")->data<float>();
      for (int i = 0; i < kWidth; ++i) sum_[i] += double(update.num_examples) * w[i];
      total_ += update.num_examples;
      std::lock_guard<std::mutex> lock(owner_->log_->mu);
      owner_->log_->added.push_back(update.client_id);
      return Status::OK();
    }
    Result<nlohmann::json> finish(const std::vector<strategies::ClientFailure>& failures) override {
      {
        std::lock_guard<std::mutex> lock(owner_->log_->mu);
        owner_->log_->failures.push_back(failures);
      }
      if (total_ > 0) {
        std::vector<float> mean;
        for (double s : sum_) mean.push_back(static_cast<float>(s / double(total_)));
        auto global = std::make_shared<TensorBundle>();
        FEDTAIL_RETURN_IF_ERROR(
            global->add(NamedTensor::from_values("w", DType::kFloat32, {kWidth}, mean)));
        owner_->global_ = std::move(global);
      }
      return nlohmann::json{{"examples", total_}, {"loss", 0.5}};
    }

   private:
    TestStrategy* owner_;
    std::vector<double> sum_;
    int64_t total_ = 0;
  };

  std::shared_ptr<StrategyLog> log_;
  double fraction_;
  int min_clients_;
  bool evaluate_clients_ = true;
  std::shared_ptr<const TensorBundle> global_;
};

}  // namespace fedtail::coordinator::testing

#endif  // FEDTAIL_TESTS_UNIT_COORDINATOR_TEST_STRATEGY_H_
