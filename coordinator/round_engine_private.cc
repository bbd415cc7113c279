// The round engine's secure-aggregation and differential-privacy rounds (config.secagg,
// config.privacy; coordinator/privacy_options.h). A private round replaces the fit phase of
// round_engine.cc's run_round: the engine aggregates the updates itself (SecureSum or ClippedSum,
// coordinator/private_aggregation.h) and hands the strategy one update, the round's mean.
//
// SecAgg+ (common/privacy/secagg.h) runs as five phases of one round: advertise, share and receive
// (TaskKind::kSecAgg, deadline secagg.stage_timeout_s), the fit phase with masked uploads, and
// unmask. A stage that leaves too few clients fails the round cleanly: the strategy keeps its model
// (its Aggregation gets no update), the failures say why, and the run goes on.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "common/privacy/dp_noise.h"
#include "common/privacy/quantize.h"
#include "common/privacy/secagg.h"
#include "common/wire/float_elements.h"
#include "coordinator/private_aggregation.h"
#include "coordinator/round_engine.h"

namespace fedtail::coordinator {
namespace {

using strategies::ClientFailure;
using strategies::TaskSpec;

// The replies of a kSecAgg phase: client id -> its "secagg" object. A report without one fails
// its client.
std::map<std::string, nlohmann::json> replies_of(const std::vector<strategies::EvalReport>& reports,
                                                 const char* stage,
                                                 std::vector<ClientFailure>* failures) {
  std::map<std::string, nlohmann::json> replies;
  for (const auto& report : reports) {
    auto reply = report.metrics.find("secagg");
    if (reply == report.metrics.end() || !reply->is_object()) {
      failures->push_back({report.client_id, std::string("secagg ") + stage +
                                                 ": the reply holds no \"secagg\" object"});
      continue;
    }
    replies.emplace(report.client_id, *reply);
  }
  return replies;
}

void add_failures(const std::map<std::string, std::string>& dropped, const char* stage,
                  std::vector<ClientFailure>* failures) {
  for (const auto& [id, reason] : dropped) {
    failures->push_back({id, std::string("secagg ") + stage + ": " + reason});
  }
}

// The round's failures, one entry per client (the first stage that lost it), sorted by id.
std::vector<ClientFailure> one_per_client(std::vector<ClientFailure> failures) {
  std::set<std::string> seen;
  std::vector<ClientFailure> unique;
  for (auto& f : failures) {
    if (seen.insert(f.client_id).second) unique.push_back(std::move(f));
  }
  std::sort(unique.begin(), unique.end(),
            [](const auto& a, const auto& b) { return a.client_id < b.client_id; });
  return unique;
}

// One kSecAgg task: {"secagg": request + {"stage": stage}}.
TaskSpec stage_task(const std::string& client, const char* stage, nlohmann::json request) {
  TaskSpec spec;
  spec.client_id = client;
  request["stage"] = stage;
  spec.config = {{"secagg", std::move(request)}};
  return spec;
}

}  // namespace

bool RoundEngine::private_fit() const {
  return config_.options.secagg.enabled || config_.options.privacy.enabled();
}

Status RoundEngine::prepare_privacy() {
  const CoordinatorOptions& options = config_.options;
  if (!private_fit()) return Status::OK();
  const char* section = options.secagg.enabled ? "config.secagg" : "config.privacy";
  Status supported = strategy_->supports_mean_aggregation();
  if (!supported.ok()) {
    return Status::FailedPrecondition("strategy " + options.strategy_name + " cannot run with " +
                                      section + ": " + supported.message());
  }
  const PrivacyOptions& dp = options.privacy;
  if (!dp.enabled()) return Status::OK();
  dp_population_ = dp.population > 0 ? dp.population : config_.run_config->data.clients;
  if (dp_population_ <= 0) {
    return Status::InvalidArgument(
        "config.privacy.population: the number of clients rounds sample from is unknown (set it, "
        "or config.data.clients)");
  }
  dp_clip_norm_ = dp.clip_norm;
  dp_noise_multiplier_ = dp.noise_multiplier.value_or(-1);  // < 0: calibrated at round 1
  if (config_.resumed && config_.privacy_state.is_object()) {
    const nlohmann::json& state = config_.privacy_state;
    try {
      Status restored = accountant_.restore(state.at("rdp").get<std::vector<double>>(),
                                            state.at("steps").get<int64_t>());
      if (!restored.ok()) return restored.with_context("resume: the privacy accountant");
      dp_clip_norm_ = state.at("next_clip_norm").get<double>();
      dp_noise_multiplier_ = state.at("noise_multiplier").get<double>();
    } catch (const nlohmann::json::exception& e) {
      return Status::Corruption(
          std::string("resume: the last metrics line's \"privacy\" object: ") + e.what());
    }
    spdlog::info("privacy: resumed after {} accounted round(s), epsilon {:.4f} at delta {:g}",
                 accountant_.steps(), accountant_.epsilon(dp.delta), dp.delta);
  }
  return Status::OK();
}

Result<bool> RoundEngine::privacy_allows(int round, int selected, bool* last) {
  *last = false;
  const PrivacyOptions& dp = config_.options.privacy;
  if (!dp.enabled() || selected == 0) return true;
  const double q =
      std::min(1.0, static_cast<double>(selected) / static_cast<double>(dp_population_));
  if (dp_noise_multiplier_ < 0) {  // (parse_privacy_options: then target_epsilon is set)
    // Calibrate once: the smallest z that keeps every planned round within the budget.
    const int64_t rounds = config_.options.rounds - (round - 1) + accountant_.steps();
    Result<double> z = privacy::noise_multiplier_for(q, rounds, *dp.target_epsilon, dp.delta);
    if (!z.ok()) {
      return Status::InvalidArgument("config.privacy.target_epsilon: no noise multiplier keeps " +
                                     std::to_string(rounds) + " round(s) at sampling rate " +
                                     std::to_string(q) + " within it (" + z.status().message() +
                                     "); raise it or plan fewer rounds");
    }
    dp_noise_multiplier_ = *z;
    spdlog::info(
        "privacy: noise multiplier {:.4g} keeps {} round(s) at sampling rate {:.4g} within "
        "epsilon {:g} at delta {:g}",
        dp_noise_multiplier_, rounds, q, *dp.target_epsilon, dp.delta);
  }
  if (!dp.target_epsilon) return true;
  const double next = accountant_.epsilon_after_step(q, dp_noise_multiplier_, dp.delta);
  if (next > *dp.target_epsilon) {
    spdlog::warn(
        "privacy: round {} would bring epsilon to {:.4f}, above privacy.target_epsilon {:g}; the "
        "run ends after round {} (epsilon {:.4f})",
        round, next, *dp.target_epsilon, round - 1, accountant_.epsilon(dp.delta));
    return false;
  }
  privacy::RdpAccountant after = accountant_;
  after.add_step(q, dp_noise_multiplier_);
  *last = after.epsilon_after_step(q, dp_noise_multiplier_, dp.delta) > *dp.target_epsilon;
  return true;
}

nlohmann::json RoundEngine::account_privacy_round(int selected, double effective_noise_multiplier) {
  const PrivacyOptions& dp = config_.options.privacy;
  const double q =
      std::min(1.0, static_cast<double>(selected) / static_cast<double>(dp_population_));
  accountant_.add_step(q, effective_noise_multiplier);
  return {{"mode", privacy_mode_name(dp.mode)},
          {"epsilon", accountant_.epsilon(dp.delta)},
          {"delta", dp.delta},
          {"sampling_rate", q},
          {"noise_multiplier", dp_noise_multiplier_},
          {"effective_noise_multiplier", effective_noise_multiplier},
          {"clip_norm", dp_clip_norm_},
          {"next_clip_norm", dp_clip_norm_},
          {"steps", accountant_.steps()},
          {"rdp", accountant_.rdp()}};
}

Result<nlohmann::json> RoundEngine::finish_with_mean(
    int round, std::optional<TensorBundle> mean, const std::map<std::string, int64_t>& contributors,
    nlohmann::json loss, const std::vector<ClientFailure>& failures) {
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<strategies::Aggregation> aggregation,
                           strategy_->begin_aggregation(round));
  if (mean) {
    strategies::ClientUpdate update;
    update.client_id = "(aggregate)";
    for (const auto& [id, examples] : contributors) update.num_examples += examples;
    update.num_examples = std::max<int64_t>(update.num_examples, 1);
    update.bundle = std::move(*mean);
    update.metrics = {{"loss", std::move(loss)}};
    update.contributors = static_cast<int>(contributors.size());
    Status added = aggregation->add(std::move(update));
    if (!added.ok()) return added.with_context("the strategy refused the round's aggregate");
  }
  return aggregation->finish(failures);
}

Result<RoundEngine::PrivateFit> RoundEngine::run_private_fit(int round,
                                                             const std::vector<TaskSpec>& specs) {
  std::shared_ptr<const TensorBundle> base = specs.front().bundle;
  for (const TaskSpec& spec : specs) {
    if (!spec.bundle || spec.bundle != base) {
      return Status::FailedPrecondition(
          "secure aggregation and DP need every client of a round to get the same model; "
          "strategy " +
          config_.options.strategy_name + " gave client " + spec.client_id + " another bundle");
    }
  }
  if (config_.options.secagg.enabled) return run_secure_fit(round, specs, base);
  return run_central_dp_fit(round, specs, base);
}

Result<RoundEngine::PrivateFit> RoundEngine::run_central_dp_fit(
    int round, const std::vector<TaskSpec>& specs, std::shared_ptr<const TensorBundle> base) {
  const PrivacyOptions& dp = config_.options.privacy;
  ClippedSum sum(base, dp_clip_norm_);
  FEDTAIL_ASSIGN_OR_RETURN(PhaseOutcome outcome, run_phase(round, TaskKind::kFit, specs, &sum));
  const int selected = static_cast<int>(specs.size());
  // Adaptive clipping spends part of the budget on the clipped count (Andrew et al. 2021): the
  // update gets the noise multiplier that leaves the total at dp_noise_multiplier_.
  double update_z = dp_noise_multiplier_;
  if (dp.adaptive && dp_noise_multiplier_ > 0) {
    FEDTAIL_ASSIGN_OR_RETURN(update_z, privacy::update_noise_multiplier(dp_noise_multiplier_,
                                                                        dp.count_noise_multiplier));
  }
  Rng rng = privacy::os_seeded_rng();
  std::optional<TensorBundle> mean;
  if (!sum.contributors().empty()) {
    FEDTAIL_ASSIGN_OR_RETURN(
        TensorBundle noised,
        sum.noised_mean(update_z * dp_clip_norm_, static_cast<double>(selected), rng));
    mean = std::move(noised);
  }
  PrivateFit fit;
  fit.privacy = account_privacy_round(selected, dp_noise_multiplier_);
  fit.privacy["updates"] = sum.contributors().size();
  fit.privacy["unclipped"] = sum.unclipped();
  fit.privacy["max_update_norm"] = sum.max_norm();
  if (dp.adaptive) {
    const double noised_count = sum.unclipped() + dp.count_noise_multiplier * rng.normal();
    const double b = noised_count / static_cast<double>(selected);
    dp_clip_norm_ =
        privacy::next_clip_norm(dp_clip_norm_, b, dp.target_quantile, dp.clip_learning_rate);
    fit.privacy["unclipped_fraction_noised"] = b;
    fit.privacy["next_clip_norm"] = dp_clip_norm_;
  }
  FEDTAIL_ASSIGN_OR_RETURN(fit.metrics, finish_with_mean(round, std::move(mean), sum.contributors(),
                                                         sum.mean_loss(), outcome.failures));
  fit.outcome = std::move(outcome);
  return fit;
}

Result<RoundEngine::PrivateFit> RoundEngine::run_secure_fit(
    int round, const std::vector<TaskSpec>& specs, std::shared_ptr<const TensorBundle> base) {
  const SecAggOptions& options = config_.options.secagg;
  const PrivacyOptions& dp = config_.options.privacy;
  // With DP the clients clip their change (and, distributed, add their noise share); weights are
  // uniform and the mean's denominator is the clients selected (DP-FedAvg's fixed denominator).
  const bool with_dp = dp.enabled();
  const bool distributed_dp = dp.mode == PrivacyOptions::Mode::kDistributed;
  const int selected = static_cast<int>(specs.size());
  FEDTAIL_RETURN_IF_ERROR(privacy::check_quantize_params(options.quantize, selected));
  const double stage_s = options.stage_timeout_s;

  PrivateFit fit;
  PhaseOutcome total;
  total.selected = selected;
  std::vector<ClientFailure> failures;
  nlohmann::json stages = nlohmann::json::object();
  auto run_stage =
      [&](const char* stage,
          const std::vector<TaskSpec>& tasks) -> Result<std::map<std::string, nlohmann::json>> {
    FEDTAIL_ASSIGN_OR_RETURN(PhaseOutcome outcome,
                             run_phase(round, TaskKind::kSecAgg, tasks, nullptr, stage_s));
    total.bytes_down += outcome.bytes_down;
    total.bytes_up += outcome.bytes_up;
    for (auto& f : outcome.failures) {
      failures.push_back({f.client_id, std::string("secagg ") + stage + ": " + f.reason});
    }
    stages[stage] = {{"tasks", tasks.size()}, {"answers", outcome.answered}};
    return replies_of(outcome.reports, stage, &failures);
  };
  privacy::ServerSecAgg server(
      options.params, static_cast<uint64_t>(round),
      Rng::derive(config_.run_config->seed, "secagg", {static_cast<uint64_t>(round)}));
  // The strategy's per-client instructions, kept for the mask (fit) tasks.
  std::map<std::string, const TaskSpec*> spec_of;
  for (const TaskSpec& spec : specs) spec_of[spec.client_id] = &spec;

  // Ends the round without an aggregate: the strategy keeps its model.
  auto fail_round = [&](const Status& why) -> Result<PrivateFit> {
    spdlog::warn("round {}: secure aggregation failed: {}; the model is kept", round,
                 why.message());
    fit.secagg = {{"stages", stages}, {"error", why.message()}};
    if (dp.enabled()) {
      // Nothing was released, but clients were sampled: account conservatively.
      fit.privacy = account_privacy_round(selected, dp_noise_multiplier_);
    }
    total.failures = one_per_client(failures);
    FEDTAIL_ASSIGN_OR_RETURN(
        fit.metrics, finish_with_mean(round, std::nullopt, {}, nlohmann::json(), total.failures));
    total.answered = 0;
    fit.outcome = std::move(total);
    return std::move(fit);
  };

  // 1. advertise
  std::vector<TaskSpec> tasks;
  for (const TaskSpec& spec : specs) {
    tasks.push_back(stage_task(spec.client_id, privacy::kStageAdvertise, nlohmann::json::object()));
  }
  FEDTAIL_ASSIGN_OR_RETURN(auto replies, run_stage(privacy::kStageAdvertise, tasks));
  Result<std::map<std::string, std::string>> dropped = server.on_advertised(replies);
  if (!dropped.ok()) return fail_round(dropped.status());
  add_failures(*dropped, privacy::kStageAdvertise, &failures);

  // 2. share
  tasks.clear();
  for (const std::string& id : server.advertised()) {
    tasks.push_back(stage_task(id, privacy::kStageShare, server.share_request(id)));
  }
  FEDTAIL_ASSIGN_OR_RETURN(replies, run_stage(privacy::kStageShare, tasks));
  dropped = server.on_shared(replies);
  if (!dropped.ok()) return fail_round(dropped.status());
  add_failures(*dropped, privacy::kStageShare, &failures);

  // 3. receive
  tasks.clear();
  for (const std::string& id : server.shared()) {
    tasks.push_back(stage_task(id, privacy::kStageReceive, server.receive_request(id)));
  }
  FEDTAIL_ASSIGN_OR_RETURN(replies, run_stage(privacy::kStageReceive, tasks));
  dropped = server.on_received(replies);
  if (!dropped.ok()) return fail_round(dropped.status());
  add_failures(*dropped, privacy::kStageReceive, &failures);

  // 4. mask: the fit phase, with masked uploads summed as they arrive.
  std::map<std::string, int64_t> declared;
  for (const auto& client : registry_->available_clients())
    declared[client.id] = client.num_examples;
  int64_t most = 1;
  for (const std::string& id : server.maskers()) most = std::max(most, declared[id]);
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle layout, privacy::masked_layout(*base));
  auto expected = std::make_shared<const TensorBundle>(std::move(layout));
  const double noise_share = distributed_dp ? dp_noise_multiplier_ * dp_clip_norm_ /
                                                  std::sqrt(static_cast<double>(selected))
                                            : 0.0;
  std::map<std::string, double> weight_of;
  tasks.clear();
  for (const std::string& id : server.maskers()) {
    TaskSpec task = *spec_of.at(id);
    const double weight =
        with_dp ? 1.0
                : std::max(static_cast<double>(declared[id]), 1.0) / static_cast<double>(most);
    weight_of[id] = weight;
    nlohmann::json request = {{"stage", privacy::kStageMask},
                              {"neighbours", server.active_neighbours(id)},
                              {"weight", weight},
                              {"clip", options.quantize.clip},
                              {"bits", options.quantize.bits}};
    if (with_dp) {
      request["clip_norm"] = dp_clip_norm_;
      request["noise_stddev"] = noise_share;  // 0 in central mode: the coordinator adds it
    }
    if (!task.config.is_object()) task.config = nlohmann::json::object();
    task.config["secagg"] = std::move(request);
    task.expected_update = expected;
    tasks.push_back(std::move(task));
  }
  SecureSum sum(*base);
  FEDTAIL_ASSIGN_OR_RETURN(PhaseOutcome masked, run_phase(round, TaskKind::kFit, tasks, &sum));
  total.bytes_down += masked.bytes_down;
  total.bytes_up += masked.bytes_up;
  total.timing = masked.timing;
  for (auto& f : masked.failures) {
    failures.push_back({f.client_id, std::string("secagg mask: ") + f.reason});
  }
  stages[privacy::kStageMask] = {{"tasks", tasks.size()}, {"answers", masked.answered}};
  std::set<std::string> survivors;
  for (const auto& [id, examples] : sum.contributors()) survivors.insert(id);
  Status on_masked = server.on_masked(survivors);
  if (!on_masked.ok()) return fail_round(on_masked);

  // 5. unmask
  tasks.clear();
  for (const std::string& id : survivors) {
    tasks.push_back(stage_task(id, privacy::kStageUnmask, server.unmask_request(id)));
  }
  FEDTAIL_ASSIGN_OR_RETURN(replies, run_stage(privacy::kStageUnmask, tasks));
  std::map<std::string, std::string> bad_senders;
  Status unmasked = server.unmask(replies, sum.sum(), sum.words(), &bad_senders);
  add_failures(bad_senders, privacy::kStageUnmask, &failures);
  if (!unmasked.ok()) return fail_round(unmasked);

  double weight_sum = 0;
  for (const std::string& id : survivors) weight_sum += weight_of[id];
  if (with_dp) weight_sum = static_cast<double>(selected);  // DP-FedAvg's fixed denominator
  FEDTAIL_ASSIGN_OR_RETURN(
      TensorBundle mean,
      privacy::dequantize_mean(sum.sum(), sum.words(), static_cast<int64_t>(survivors.size()),
                               weight_sum, *base, options.quantize));
  if (with_dp && !distributed_dp && dp_noise_multiplier_ > 0) {
    // Central DP over secure aggregation: the coordinator noises the unmasked sum of the clipped
    // changes (it never sees one of them).
    Rng rng = privacy::os_seeded_rng();
    const double stddev = dp_noise_multiplier_ * dp_clip_norm_ / static_cast<double>(selected);
    for (NamedTensor& t : mean) {
      if (!dtype_is_floating(t.dtype())) continue;
      uint8_t* bytes = t.mutable_bytes();
      for (int64_t i = 0; i < t.numel(); ++i) {
        store_float(t.dtype(), bytes, i, load_float(t.dtype(), bytes, i) + stddev * rng.normal());
      }
    }
  }
  fit.secagg = {{"stages", stages},
                {"advertised", server.advertised().size()},
                {"shared", server.shared().size()},
                {"confirmed", server.confirmed().size()},
                {"survivors", survivors.size()},
                {"recovered_dropouts", server.confirmed().size() - survivors.size()}};
  if (distributed_dp) {
    // The noise in the sum is what the survivors added: sqrt(|U4| / m) of the planned multiplier.
    const double effective =
        dp_noise_multiplier_ *
        std::sqrt(static_cast<double>(survivors.size()) / static_cast<double>(selected));
    fit.privacy = account_privacy_round(selected, effective);
  } else if (with_dp) {
    fit.privacy = account_privacy_round(selected, dp_noise_multiplier_);
  }
  total.failures = one_per_client(std::move(failures));
  FEDTAIL_ASSIGN_OR_RETURN(fit.metrics, finish_with_mean(round, std::move(mean), sum.contributors(),
                                                         sum.mean_loss(), total.failures));
  total.answered = static_cast<int>(survivors.size());
  fit.outcome = std::move(total);
  return fit;
}

}  // namespace fedtail::coordinator
