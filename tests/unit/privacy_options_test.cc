#include "coordinator/privacy_options.h"

#include <gtest/gtest.h>

#include <string>

#include "coordinator/options.h"

namespace fedtail::coordinator {
namespace {

using Mode = PrivacyOptions::Mode;

// `status` is kInvalidArgument and its message contains `fragment`.
void expect_invalid(const Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
  EXPECT_NE(status.message().find(fragment), std::string::npos) << status.message();
}

void expect_secagg_refused(const nlohmann::json& section, const std::string& fragment) {
  SCOPED_TRACE(section.dump());
  Result<SecAggOptions> options = parse_secagg_options(section);
  ASSERT_FALSE(options.ok());
  expect_invalid(options.status(), fragment);
}

void expect_privacy_refused(const nlohmann::json& section, const std::string& fragment) {
  SCOPED_TRACE(section.dump());
  Result<PrivacyOptions> options = parse_privacy_options(section);
  ASSERT_FALSE(options.ok());
  expect_invalid(options.status(), fragment);
}

// ---- config.secagg ----

TEST(SecAggOptionsTest, NullIsDisabled) {
  Result<SecAggOptions> options = parse_secagg_options(nlohmann::json());
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_FALSE(options->enabled);
}

TEST(SecAggOptionsTest, AnEmptyObjectEnablesItWithTheDefaults) {
  Result<SecAggOptions> options = parse_secagg_options(nlohmann::json::object());
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_TRUE(options->enabled);
  EXPECT_EQ(options->params.neighbours, 16);
  EXPECT_EQ(options->params.reconstruction_threshold, 0.5);
  EXPECT_EQ(options->params.max_dropout_fraction, 0.3);
  EXPECT_EQ(options->quantize.clip, 1.0);
  EXPECT_EQ(options->quantize.bits, 20);
  EXPECT_EQ(options->stage_timeout_s, 60.0);
}

TEST(SecAggOptionsTest, ReadsEveryField) {
  Result<SecAggOptions> options = parse_secagg_options({{"neighbours", 8},
                                                        {"reconstruction_threshold", 1.0},
                                                        {"max_dropout_fraction", 0.0},
                                                        {"clip", 0.25},
                                                        {"bits", 16},
                                                        {"stage_timeout_s", 2.5}});
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_TRUE(options->enabled);
  EXPECT_EQ(options->params.neighbours, 8);
  EXPECT_EQ(options->params.reconstruction_threshold, 1.0);  // the top of (0, 1]
  EXPECT_EQ(options->params.max_dropout_fraction, 0.0);      // the bottom of [0, 1)
  EXPECT_EQ(options->quantize.clip, 0.25);
  EXPECT_EQ(options->quantize.bits, 16);
  EXPECT_EQ(options->stage_timeout_s, 2.5);
}

TEST(SecAggOptionsTest, RefusesBadValuesNamingTheField) {
  expect_secagg_refused({{"neighbours", 3}}, "config.secagg.neighbours: must be an even number");
  expect_secagg_refused({{"neighbours", 0}}, "config.secagg.neighbours");
  expect_secagg_refused({{"reconstruction_threshold", 0}},
                        "config.secagg.reconstruction_threshold");
  expect_secagg_refused({{"reconstruction_threshold", 1.5}},
                        "config.secagg.reconstruction_threshold");
  expect_secagg_refused({{"max_dropout_fraction", 1}}, "config.secagg.max_dropout_fraction");
  expect_secagg_refused({{"max_dropout_fraction", -0.1}}, "config.secagg.max_dropout_fraction");
  // bits and clip go through check_quantize_params.
  expect_secagg_refused({{"bits", 32}}, "config.secagg.bits");
  expect_secagg_refused({{"bits", 0}}, "config.secagg.bits");
  expect_secagg_refused({{"clip", 0}}, "config.secagg.clip");
  expect_secagg_refused({{"stage_timeout_s", 0}}, "config.secagg.stage_timeout_s");
  // Wrong types, unknown keys and a section that is not an object.
  expect_secagg_refused({{"bits", "20"}}, "config.secagg.bits: expected");
  expect_secagg_refused({{"neighbors", 16}}, "config.secagg.neighbors: unknown key");
  expect_secagg_refused(true, "config.secagg: expected an object");
}

// ---- config.privacy ----

TEST(PrivacyOptionsTest, NullIsOff) {
  Result<PrivacyOptions> options = parse_privacy_options(nlohmann::json());
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_EQ(options->mode, Mode::kOff);
  EXPECT_FALSE(options->enabled());
  EXPECT_STREQ(privacy_mode_name(Mode::kOff), "off");
}

TEST(PrivacyOptionsTest, ModeIsRequired) {
  expect_privacy_refused(nlohmann::json::object(), "config.privacy.mode: missing required field");
  expect_privacy_refused({{"noise_multiplier", 1}}, "config.privacy.mode: missing required field");
  expect_privacy_refused({{"mode", "local"}, {"noise_multiplier", 1}},
                         "config.privacy.mode: must be one of central, distributed");
}

TEST(PrivacyOptionsTest, CentralWithANoiseMultiplierAndTheDefaults) {
  Result<PrivacyOptions> options =
      parse_privacy_options({{"mode", "central"}, {"noise_multiplier", 1.1}});
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_EQ(options->mode, Mode::kCentral);
  EXPECT_TRUE(options->enabled());
  EXPECT_STREQ(privacy_mode_name(options->mode), "central");
  EXPECT_EQ(options->clip_norm, 1.0);
  ASSERT_TRUE(options->noise_multiplier.has_value());
  EXPECT_EQ(*options->noise_multiplier, 1.1);
  EXPECT_FALSE(options->target_epsilon.has_value());
  EXPECT_EQ(options->delta, 1e-5);
  EXPECT_EQ(options->population, 0);
  EXPECT_FALSE(options->adaptive);
}

TEST(PrivacyOptionsTest, DistributedWithATargetEpsilonAndEveryField) {
  Result<PrivacyOptions> options = parse_privacy_options({{"mode", "distributed"},
                                                          {"clip_norm", 0.5},
                                                          {"target_epsilon", 8},
                                                          {"delta", 1e-6},
                                                          {"population", 1000}});
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_EQ(options->mode, Mode::kDistributed);
  EXPECT_STREQ(privacy_mode_name(options->mode), "distributed");
  EXPECT_EQ(options->clip_norm, 0.5);
  EXPECT_FALSE(options->noise_multiplier.has_value());  // calibrated from target_epsilon
  ASSERT_TRUE(options->target_epsilon.has_value());
  EXPECT_EQ(*options->target_epsilon, 8.0);
  EXPECT_EQ(options->delta, 1e-6);
  EXPECT_EQ(options->population, 1000);

  // A noise multiplier of 0 is allowed (>= 0), with a target too.
  options =
      parse_privacy_options({{"mode", "central"}, {"noise_multiplier", 0}, {"target_epsilon", 2}});
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_EQ(*options->noise_multiplier, 0.0);
  EXPECT_EQ(*options->target_epsilon, 2.0);
}

TEST(PrivacyOptionsTest, NeedsANoiseMultiplierOrATargetEpsilon) {
  Result<PrivacyOptions> options = parse_privacy_options({{"mode", "central"}});
  ASSERT_FALSE(options.ok());
  expect_invalid(options.status(), "config.privacy");
  EXPECT_NE(options.status().message().find("noise_multiplier"), std::string::npos);
  EXPECT_NE(options.status().message().find("target_epsilon"), std::string::npos);
}

// JsonReader's rule (an optional key that is null is absent), which the header's own example
// relies on ("target_epsilon": null).
TEST(PrivacyOptionsTest, NullOptionalFieldsCountAsAbsent) {
  Result<PrivacyOptions> options = parse_privacy_options({{"mode", "central"},
                                                          {"clip_norm", 1.0},
                                                          {"noise_multiplier", 1.0},
                                                          {"target_epsilon", nullptr},
                                                          {"delta", 1e-5},
                                                          {"population", 0}});
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_FALSE(options->target_epsilon.has_value());
  EXPECT_EQ(*options->noise_multiplier, 1.0);

  options = parse_privacy_options(
      {{"mode", "central"}, {"noise_multiplier", nullptr}, {"target_epsilon", 4}});
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_FALSE(options->noise_multiplier.has_value());
  EXPECT_EQ(*options->target_epsilon, 4.0);

  options = parse_privacy_options(
      {{"mode", "central"}, {"noise_multiplier", 1}, {"adaptive_clipping", nullptr}});
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_FALSE(options->adaptive);

  // Both null: neither is given.
  expect_privacy_refused(
      {{"mode", "central"}, {"noise_multiplier", nullptr}, {"target_epsilon", nullptr}},
      "give noise_multiplier, or target_epsilon");
}

TEST(PrivacyOptionsTest, RefusesBadValuesNamingTheField) {
  auto with = [](const char* key, nlohmann::json value) {
    nlohmann::json section = {{"mode", "central"}, {"noise_multiplier", 1}};
    section[key] = std::move(value);
    return section;
  };
  expect_privacy_refused(with("delta", 0), "config.privacy.delta: must be in (0, 1)");
  expect_privacy_refused(with("delta", 1), "config.privacy.delta");
  expect_privacy_refused(with("clip_norm", 0), "config.privacy.clip_norm");
  expect_privacy_refused(with("clip_norm", -1), "config.privacy.clip_norm");
  expect_privacy_refused(with("noise_multiplier", -0.5), "config.privacy.noise_multiplier");
  expect_privacy_refused(with("target_epsilon", 0), "config.privacy.target_epsilon");
  expect_privacy_refused(with("population", -1), "config.privacy.population");
  expect_privacy_refused(with("epsilon", 8), "config.privacy.epsilon: unknown key");
  expect_privacy_refused(with("delta", "small"), "config.privacy.delta: expected a number");
  expect_privacy_refused("central", "config.privacy: expected an object");
}

TEST(PrivacyOptionsTest, ReadsAdaptiveClipping) {
  Result<PrivacyOptions> options = parse_privacy_options(
      {{"mode", "central"},
       {"noise_multiplier", 1},
       {"adaptive_clipping",
        {{"target_quantile", 0.7}, {"learning_rate", 0.1}, {"count_noise_multiplier", 5}}}});
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_TRUE(options->adaptive);
  EXPECT_EQ(options->target_quantile, 0.7);
  EXPECT_EQ(options->clip_learning_rate, 0.1);
  EXPECT_EQ(options->count_noise_multiplier, 5.0);

  // An empty block turns it on with the defaults 0.5 / 0.2 / 10.
  options = parse_privacy_options({{"mode", "central"},
                                   {"noise_multiplier", 1},
                                   {"adaptive_clipping", nlohmann::json::object()}});
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_TRUE(options->adaptive);
  EXPECT_EQ(options->target_quantile, 0.5);
  EXPECT_EQ(options->clip_learning_rate, 0.2);
  EXPECT_EQ(options->count_noise_multiplier, 10.0);

  // Without the block: off.
  options = parse_privacy_options({{"mode", "central"}, {"noise_multiplier", 1}});
  ASSERT_TRUE(options.ok());
  EXPECT_FALSE(options->adaptive);
}

TEST(PrivacyOptionsTest, RefusesBadAdaptiveClippingNamingTheField) {
  auto with = [](nlohmann::json block) {
    return nlohmann::json{
        {"mode", "central"}, {"noise_multiplier", 1}, {"adaptive_clipping", std::move(block)}};
  };
  expect_privacy_refused(with({{"target_quantile", 1}}),
                         "config.privacy.adaptive_clipping.target_quantile");
  expect_privacy_refused(with({{"target_quantile", 0}}),
                         "config.privacy.adaptive_clipping.target_quantile");
  expect_privacy_refused(with({{"learning_rate", 0}}),
                         "config.privacy.adaptive_clipping.learning_rate");
  expect_privacy_refused(with({{"count_noise_multiplier", -1}}),
                         "config.privacy.adaptive_clipping.count_noise_multiplier");
  expect_privacy_refused(with({{"quantile", 0.5}}),
                         "config.privacy.adaptive_clipping.quantile: unknown key");
  expect_privacy_refused(with(5), "config.privacy.adaptive_clipping: expected an object");
}

// ---- parse_coordinator_options: the cross-section rules ----

nlohmann::json run_with(nlohmann::json privacy) {
  return {{"rounds", 1}, {"strategy", {{"name", "fedavg"}}}, {"privacy", std::move(privacy)}};
}

TEST(CoordinatorPrivacyOptionsTest, NeitherSectionMeansBothOff) {
  Result<CoordinatorOptions> options =
      parse_coordinator_options({{"rounds", 1}, {"strategy", {{"name", "fedavg"}}}});
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_FALSE(options->secagg.enabled);
  EXPECT_EQ(options->privacy.mode, Mode::kOff);
}

TEST(CoordinatorPrivacyOptionsTest, DistributedNeedsSecAgg) {
  nlohmann::json sections = run_with({{"mode", "distributed"}, {"noise_multiplier", 1}});
  Result<CoordinatorOptions> options = parse_coordinator_options(sections);
  ASSERT_FALSE(options.ok());
  expect_invalid(options.status(), "config.privacy.mode");
  EXPECT_NE(options.status().message().find("config.secagg"), std::string::npos)
      << options.status().message();

  sections["secagg"] = nlohmann::json::object();
  options = parse_coordinator_options(sections);
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_TRUE(options->secagg.enabled);
  EXPECT_EQ(options->secagg.quantize.bits, 20);
  EXPECT_EQ(options->privacy.mode, Mode::kDistributed);
  ASSERT_TRUE(options->privacy.noise_multiplier.has_value());
  EXPECT_EQ(*options->privacy.noise_multiplier, 1.0);

  // A null secagg section is an absent one.
  sections["secagg"] = nullptr;
  expect_invalid(parse_coordinator_options(sections).status(), "config.privacy.mode");
}

TEST(CoordinatorPrivacyOptionsTest, CentralNeedsNoSecAgg) {
  Result<CoordinatorOptions> options =
      parse_coordinator_options(run_with({{"mode", "central"}, {"noise_multiplier", 1}}));
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_FALSE(options->secagg.enabled);
  EXPECT_EQ(options->privacy.mode, Mode::kCentral);
}

TEST(CoordinatorPrivacyOptionsTest, AdaptiveClippingOnlyWithCentral) {
  nlohmann::json sections = run_with({{"mode", "distributed"},
                                      {"noise_multiplier", 1},
                                      {"adaptive_clipping", nlohmann::json::object()}});
  sections["secagg"] = nlohmann::json::object();
  expect_invalid(parse_coordinator_options(sections).status(),
                 "config.privacy.adaptive_clipping: only with mode \"central\"");

  // Central mode (without secagg: whether central DP may be combined with secagg is left to the
  // cross-section rules, which do not decide it yet).
  sections.erase("secagg");
  sections["privacy"]["mode"] = "central";
  Result<CoordinatorOptions> options = parse_coordinator_options(sections);
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_TRUE(options->privacy.adaptive);
  EXPECT_EQ(options->privacy.mode, Mode::kCentral);
  EXPECT_FALSE(options->secagg.enabled);
}

TEST(CoordinatorPrivacyOptionsTest, SectionErrorsPassThrough) {
  nlohmann::json sections = {{"rounds", 1}, {"strategy", {{"name", "fedavg"}}}};
  sections["secagg"] = {{"bits", 32}};
  expect_invalid(parse_coordinator_options(sections).status(), "config.secagg.bits");
  sections["secagg"] = nlohmann::json::object();
  sections["privacy"] = {{"mode", "distributed"}, {"delta", 0}, {"noise_multiplier", 1}};
  expect_invalid(parse_coordinator_options(sections).status(), "config.privacy.delta");
}

}  // namespace
}  // namespace fedtail::coordinator
