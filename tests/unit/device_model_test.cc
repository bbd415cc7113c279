// DeviceModel: the "devices" section's parsing (path-named errors), per-client profiles drawn from
// the seed or a trace, the simulated task time, and availability (trace and exponential model).
#include "coordinator/device_model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>

namespace fedtail::coordinator {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

Result<DeviceOptions> parse(const nlohmann::json& json, const std::string& base_dir = "") {
  return parse_device_options(json, "config.devices", base_dir);
}

std::unique_ptr<DeviceModel> make(const nlohmann::json& json, uint64_t seed = 1) {
  Result<DeviceOptions> options = parse(json);
  EXPECT_TRUE(options.ok()) << options.status().to_string();
  if (!options.ok()) return nullptr;
  Result<std::unique_ptr<DeviceModel>> model = DeviceModel::create(*options, seed);
  EXPECT_TRUE(model.ok()) << model.status().to_string();
  return model.ok() ? std::move(model).value() : nullptr;
}

std::string client(int i) { return "client-" + std::to_string(i); }

// A fresh file under the test's temporary directory.
std::string write_file(const std::string& name, const std::string& text) {
  const std::string dir = std::string(FEDTAIL_TEST_TMP) + "/device_model_test";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/" + name;
  std::ofstream(path) << text;
  return path;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

TEST(DeviceOptionsTest, AbsentSectionIsDisabledAndEmptyOneHasDefaults) {
  Result<DeviceOptions> absent = parse(nlohmann::json());
  ASSERT_TRUE(absent.ok());
  EXPECT_FALSE(absent->enabled);

  Result<DeviceOptions> empty = parse(nlohmann::json::object());
  ASSERT_TRUE(empty.ok()) << empty.status().to_string();
  EXPECT_TRUE(empty->enabled);
  EXPECT_FALSE(empty->modeled_compute);
  EXPECT_EQ(empty->slowdown.kind, Distribution::Kind::kConstant);
  EXPECT_EQ(empty->slowdown.a, 1);
  EXPECT_EQ(empty->bandwidth_mbps.a, 100);
  EXPECT_EQ(empty->latency_ms.a, 0);
  EXPECT_EQ(empty->availability, DeviceOptions::Availability::kAlways);
  EXPECT_TRUE(empty->trace.empty());
  EXPECT_EQ(empty->deadline_s, 0);

  // The defaults as a profile: 100 Mbit/s, no latency, this machine's speed.
  std::unique_ptr<DeviceModel> model = make(nlohmann::json::object());
  ASSERT_NE(model, nullptr);
  const DeviceProfile p = model->profile("client-0");
  EXPECT_EQ(p.slowdown, 1);
  EXPECT_EQ(p.bandwidth_bps, 1e8);
  EXPECT_EQ(p.latency_s, 0);
}

TEST(DeviceOptionsTest, ParsesEachDistributionAndBareNumbers) {
  Result<DeviceOptions> o = parse({
      {"compute", "modeled"},
      {"seconds_per_example", 0.002},
      {"slowdown", {{"distribution", "lognormal"}, {"median", 2.5}, {"sigma", 0.6}}},
      {"bandwidth_mbps", {{"distribution", "uniform"}, {"min", 5}, {"max", 50}}},
      {"latency_ms", {{"distribution", "constant"}, {"value", 40}}},
      {"availability", {{"model", "exponential"}, {"mean_on_s", 600}, {"mean_off_s", 120}}},
      {"deadline_s", 90},
  });
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_TRUE(o->modeled_compute);
  EXPECT_EQ(o->seconds_per_example, 0.002);
  EXPECT_EQ(o->slowdown.kind, Distribution::Kind::kLogNormal);
  EXPECT_EQ(o->slowdown.a, 2.5);
  EXPECT_EQ(o->slowdown.b, 0.6);
  EXPECT_EQ(o->bandwidth_mbps.kind, Distribution::Kind::kUniform);
  EXPECT_EQ(o->bandwidth_mbps.a, 5);
  EXPECT_EQ(o->bandwidth_mbps.b, 50);
  EXPECT_EQ(o->latency_ms.kind, Distribution::Kind::kConstant);
  EXPECT_EQ(o->latency_ms.a, 40);
  EXPECT_EQ(o->availability, DeviceOptions::Availability::kExponential);
  EXPECT_EQ(o->mean_on_s, 600);
  EXPECT_EQ(o->mean_off_s, 120);
  EXPECT_EQ(o->deadline_s, 90);

  Result<DeviceOptions> bare =
      parse({{"slowdown", 3}, {"bandwidth_mbps", 20.5}, {"latency_ms", 0}});
  ASSERT_TRUE(bare.ok()) << bare.status().to_string();
  EXPECT_EQ(bare->slowdown.kind, Distribution::Kind::kConstant);
  EXPECT_EQ(bare->slowdown.a, 3);
  EXPECT_EQ(bare->bandwidth_mbps.a, 20.5);
  EXPECT_EQ(bare->latency_ms.a, 0);
}

TEST(DeviceOptionsTest, ErrorsNameTheJsonPath) {
  const struct {
    nlohmann::json json;
    std::string message;
  } cases[] = {
      {nlohmann::json::array(), "config.devices: expected an object"},
      {{{"speed", 2}}, "config.devices.speed: unknown key"},
      {{{"deadline_s", -1}}, "config.devices.deadline_s: must be >= 0"},
      {{{"deadline_s", "60"}}, "config.devices.deadline_s: expected a number"},
      {{{"compute", "guess"}}, "config.devices.compute"},
      {{{"compute", "modeled"}}, "config.devices.seconds_per_example: must be > 0 with"},
      {{{"compute", "modeled"}, {"seconds_per_example", 0}},
       "config.devices.seconds_per_example: must be > 0"},
      {{{"slowdown", "fast"}}, "config.devices.slowdown: expected a number or a distribution"},
      {{{"slowdown", 0}}, "config.devices.slowdown: must be > 0 (got 0)"},
      {{{"bandwidth_mbps", -1}}, "config.devices.bandwidth_mbps: must be > 0"},
      {{{"latency_ms", -5}}, "config.devices.latency_ms: must be >= 0 (got -5)"},
      {{{"slowdown", {{"value", 2}}}}, "config.devices.slowdown.distribution: missing required"},
      {{{"slowdown", {{"distribution", "gamma"}}}}, "config.devices.slowdown.distribution"},
      {{{"slowdown", {{"distribution", "constant"}}}},
       "config.devices.slowdown.value: missing required field"},
      {{{"slowdown", {{"distribution", "constant"}, {"value", 2}, {"max", 3}}}},
       "config.devices.slowdown.max: unknown key"},
      {{{"bandwidth_mbps", {{"distribution", "uniform"}, {"min", 20}, {"max", 10}}}},
       "config.devices.bandwidth_mbps.max: must be >= min"},
      {{{"bandwidth_mbps", {{"distribution", "uniform"}, {"min", 0}, {"max", 10}}}},
       "config.devices.bandwidth_mbps.min: must be > 0"},
      {{{"slowdown", {{"distribution", "lognormal"}, {"median", 0}, {"sigma", 1}}}},
       "config.devices.slowdown.median: must be > 0"},
      {{{"slowdown", {{"distribution", "lognormal"}, {"median", 1}, {"sigma", -0.1}}}},
       "config.devices.slowdown.sigma: must be >= 0"},
      {{{"slowdown", {{"distribution", "lognormal"}, {"median", 1}}}},
       "config.devices.slowdown.sigma: missing required field"},
      {{{"trace", "d.csv"}, {"slowdown", 2}}, "config.devices.slowdown: not with \"trace\""},
      {{{"trace", ""}}, "config.devices.trace: must not be empty"},
      {{{"availability", "sometimes"}}, "config.devices.availability: expected an object"},
      {{{"availability", {{"model", "sometimes"}}}}, "config.devices.availability.model"},
      {{{"availability", {{"model", "exponential"}, {"mean_on_s", 10}}}},
       "config.devices.availability.mean_off_s: must be > 0"},
      {{{"availability", {{"mean_on_s", 10}}}},
       "config.devices.availability.mean_on_s: only with \"model\": \"exponential\""},
      {{{"availability", {{"trace", "a.csv"}, {"model", "exponential"}}}},
       "config.devices.availability.model: not with \"trace\""},
      {{{"availability", {{"model", "always"}, {"every", 3}}}},
       "config.devices.availability.every: unknown key"},
  };
  for (const auto& c : cases) {
    Result<DeviceOptions> o = parse(c.json);
    ASSERT_FALSE(o.ok()) << c.json.dump();
    EXPECT_EQ(o.status().code(), StatusCode::kInvalidArgument) << c.json.dump();
    EXPECT_NE(o.status().message().find(c.message), std::string::npos)
        << c.json.dump() << " gave: " << o.status().message();
  }
}

TEST(DeviceOptionsTest, ResolvesRelativeTracePathsAgainstTheBaseDirectory) {
  Result<DeviceOptions> o =
      parse({{"trace", "traces/d.csv"}, {"availability", {{"trace", "../a.csv"}}}}, "/sim/configs");
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_EQ(o->trace, "/sim/configs/traces/d.csv");
  EXPECT_EQ(o->availability, DeviceOptions::Availability::kTrace);
  EXPECT_EQ(o->availability_trace, "/sim/a.csv");

  Result<DeviceOptions> absolute = parse({{"trace", "/data/d.csv"}}, "/sim/configs");
  ASSERT_TRUE(absolute.ok());
  EXPECT_EQ(absolute->trace, "/data/d.csv");
  Result<DeviceOptions> no_base = parse({{"trace", "d.csv"}}, "");
  ASSERT_TRUE(no_base.ok());
  EXPECT_EQ(no_base->trace, "d.csv");
}

TEST(DeviceIndexTest, NumbersClientIdsAndHashesOthers) {
  EXPECT_EQ(device_index("client-0"), 0u);
  EXPECT_EQ(device_index("client-42"), 42u);
  EXPECT_EQ(device_index("client-007"), 7u);
  // FNV-1a of "alice", top bit cleared (computed independently).
  EXPECT_EQ(device_index("alice"), 5803779529149266183u);
  for (const char* id : {"client-", "client-3x", "Client-3", "client-12345678901234567890"}) {
    EXPECT_LT(device_index(id), uint64_t{1} << 63) << id;
    EXPECT_NE(device_index(id), 3u) << id;
  }
}

TEST(DeviceModelTest, SameSeedSameProfilesAndClientsDiffer) {
  const nlohmann::json config = {
      {"slowdown", {{"distribution", "lognormal"}, {"median", 2}, {"sigma", 0.5}}},
      {"bandwidth_mbps", {{"distribution", "uniform"}, {"min", 1}, {"max", 100}}},
      {"latency_ms", {{"distribution", "uniform"}, {"min", 10}, {"max", 200}}}};
  std::unique_ptr<DeviceModel> a = make(config, /*seed=*/7);
  std::unique_ptr<DeviceModel> b = make(config, /*seed=*/7);
  std::unique_ptr<DeviceModel> other_seed = make(config, /*seed=*/8);
  ASSERT_TRUE(a && b && other_seed);
  // b asks in the reverse order: a profile does not depend on who was asked first.
  for (int i = 49; i >= 0; --i) b->profile(client(i));
  std::set<double> slowdowns;
  int same_as_other_seed = 0;
  for (int i = 0; i < 50; ++i) {
    const DeviceProfile p = a->profile(client(i));
    const DeviceProfile q = b->profile(client(i));
    EXPECT_EQ(p.slowdown, q.slowdown);
    EXPECT_EQ(p.bandwidth_bps, q.bandwidth_bps);
    EXPECT_EQ(p.latency_s, q.latency_s);
    slowdowns.insert(p.slowdown);
    same_as_other_seed += p.slowdown == other_seed->profile(client(i)).slowdown ? 1 : 0;
  }
  EXPECT_EQ(slowdowns.size(), 50u);  // every client its own device
  EXPECT_EQ(same_as_other_seed, 0);
  // Asking again gives the cached profile.
  EXPECT_EQ(a->profile(client(3)).bandwidth_bps, b->profile(client(3)).bandwidth_bps);
}

TEST(DeviceModelTest, UniformDrawsStayWithinBoundsAndSpreadOverThem) {
  std::unique_ptr<DeviceModel> model =
      make({{"bandwidth_mbps", {{"distribution", "uniform"}, {"min", 5}, {"max", 50}}},
            {"latency_ms", {{"distribution", "uniform"}, {"min", 20}, {"max", 300}}}});
  ASSERT_NE(model, nullptr);
  double low = kInf, high = 0;
  for (int i = 0; i < 1000; ++i) {
    const DeviceProfile p = model->profile(client(i));
    ASSERT_GE(p.bandwidth_bps, 5e6);
    ASSERT_LE(p.bandwidth_bps, 50e6);
    ASSERT_GE(p.latency_s, 0.020);
    ASSERT_LE(p.latency_s, 0.300);
    EXPECT_EQ(p.slowdown, 1);
    low = std::min(low, p.bandwidth_bps);
    high = std::max(high, p.bandwidth_bps);
  }
  EXPECT_LT(low, 6e6);
  EXPECT_GT(high, 49e6);
}

TEST(DeviceModelTest, LogNormalHasTheGivenMedianAndSpread) {
  std::unique_ptr<DeviceModel> model =
      make({{"slowdown", {{"distribution", "lognormal"}, {"median", 2}, {"sigma", 0.6}}}});
  ASSERT_NE(model, nullptr);
  std::vector<double> slowdowns, logs;
  for (int i = 0; i < 2000; ++i) {
    slowdowns.push_back(model->profile(client(i)).slowdown);
    logs.push_back(std::log(slowdowns.back()));
  }
  // The median of 2000 draws is within about 2.5 standard errors (0.6 × 1.25 / sqrt(2000)).
  EXPECT_NEAR(median(slowdowns), 2.0, 2.0 * 0.05);
  double mean = 0, var = 0;
  for (double l : logs) mean += l / logs.size();
  for (double l : logs) var += (l - mean) * (l - mean) / (logs.size() - 1);
  EXPECT_NEAR(std::sqrt(var), 0.6, 0.04);
}

TEST(DeviceModelTest, TaskSecondsAddsComputeTransferAndLatency) {
  // slowdown 3, 8 Mbit/s (1 MB/s), 25 ms one way.
  std::unique_ptr<DeviceModel> measured =
      make({{"slowdown", 3}, {"bandwidth_mbps", 8}, {"latency_ms", 25}});
  ASSERT_NE(measured, nullptr);
  // 2 s × 3 + (1,000,000 + 500,000) B × 8 / 8e6 bit/s + 2 × 0.025 s = 6 + 1.5 + 0.05.
  EXPECT_DOUBLE_EQ(measured->task_seconds("client-1", 2.0, /*examples=*/600, 1000000, 500000),
                   7.55);
  // Before the task: no compute, no upload: 1 s of download + 0.05 s.
  EXPECT_DOUBLE_EQ(measured->task_seconds_lower_bound("client-1", 600, 1000000), 1.05);

  std::unique_ptr<DeviceModel> modeled = make({{"compute", "modeled"},
                                               {"seconds_per_example", 0.001},
                                               {"slowdown", 3},
                                               {"bandwidth_mbps", 8},
                                               {"latency_ms", 25}});
  ASSERT_NE(modeled, nullptr);
  // 600 examples × 0.001 s × 3 = 1.8 s, whatever was measured; + 1.5 + 0.05.
  EXPECT_DOUBLE_EQ(modeled->task_seconds("client-1", 99.0, 600, 1000000, 500000), 3.35);
  // The modeled compute is known before: 1.8 + 1 + 0.05.
  EXPECT_DOUBLE_EQ(modeled->task_seconds_lower_bound("client-1", 600, 1000000), 2.85);
}

TEST(DeviceModelTest, LowerBoundNeverExceedsTheTaskTime) {
  for (const char* compute : {"measured", "modeled"}) {
    std::unique_ptr<DeviceModel> model =
        make({{"compute", compute},
              {"seconds_per_example", 0.0005},
              {"slowdown", {{"distribution", "lognormal"}, {"median", 2}, {"sigma", 1}}},
              {"bandwidth_mbps", {{"distribution", "uniform"}, {"min", 1}, {"max", 100}}},
              {"latency_ms", {{"distribution", "uniform"}, {"min", 0}, {"max", 300}}}});
    ASSERT_NE(model, nullptr);
    Rng rng(3);
    for (int i = 0; i < 500; ++i) {
      const int64_t examples = static_cast<int64_t>(rng.uniform_int(5000));
      const uint64_t down = rng.uniform_int(100000000);
      const uint64_t up = rng.uniform_int(100000000);
      const double compute_s = 10 * rng.uniform();
      const double lower = model->task_seconds_lower_bound(client(i), examples, down);
      const double total = model->task_seconds(client(i), compute_s, examples, down, up);
      EXPECT_GT(lower, 0);
      EXPECT_LE(lower, total) << compute << " client " << i;
    }
  }
}

TEST(DeviceModelTest, DeviceTraceRowsGiveTheProfiles) {
  const std::string path = write_file("devices.csv",
                                      "# three devices\n"
                                      "\n"
                                      "name, latency_ms, slowdown, bandwidth_mbps\n"
                                      "fast, 20, 1.0, 100\n"
                                      "# a comment between rows\n"
                                      "mid, 50, 2.5, 20\n"
                                      "slow, 300, 12, 1.5\n");
  std::unique_ptr<DeviceModel> model = make({{"trace", path}}, /*seed=*/5);
  ASSERT_NE(model, nullptr);
  std::map<double, int> used;
  for (int i = 0; i < 300; ++i) {
    const DeviceProfile p = model->profile(client(i));
    ++used[p.slowdown];
    if (p.slowdown == 1.0) {
      EXPECT_EQ(p.bandwidth_bps, 100e6);
      EXPECT_EQ(p.latency_s, 0.020);
    } else if (p.slowdown == 2.5) {
      EXPECT_EQ(p.bandwidth_bps, 20e6);
      EXPECT_EQ(p.latency_s, 0.050);
    } else {
      EXPECT_EQ(p.slowdown, 12);
      EXPECT_EQ(p.bandwidth_bps, 1.5e6);
      EXPECT_EQ(p.latency_s, 0.300);
    }
  }
  ASSERT_EQ(used.size(), 3u);  // every row is used, about a third of the clients each
  for (const auto& [slowdown, n] : used) {
    EXPECT_GT(n, 60) << slowdown;
  }
  std::unique_ptr<DeviceModel> again = make({{"trace", path}}, /*seed=*/5);
  ASSERT_NE(again, nullptr);
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(again->profile(client(i)).slowdown, model->profile(client(i)).slowdown);
  }
}

// The synthetic trace shipped with the simulations (tools/traces/make_device_trace.py).
TEST(DeviceModelTest, ShippedMobileTraceHasItsDocumentedShape) {
  std::unique_ptr<DeviceModel> model =
      make({{"trace", std::string(FEDTAIL_SOURCE_DIR) + "/simulations/traces/devices-mobile.csv"}});
  ASSERT_NE(model, nullptr);
  std::vector<double> slowdowns, mbps;
  for (int i = 0; i < 1000; ++i) {
    const DeviceProfile p = model->profile(client(i));
    ASSERT_GE(p.slowdown, 1);
    ASSERT_LE(p.slowdown, 15);
    ASSERT_GE(p.bandwidth_bps, 1e6);
    ASSERT_LE(p.bandwidth_bps, 100e6);
    ASSERT_GE(p.latency_s, 0.020);
    ASSERT_LE(p.latency_s, 0.300);
    slowdowns.push_back(p.slowdown);
    mbps.push_back(p.bandwidth_bps / 1e6);
  }
  EXPECT_GT(median(slowdowns), 1.8);
  EXPECT_LT(median(slowdowns), 3.2);
  EXPECT_GT(*std::max_element(slowdowns.begin(), slowdowns.end()), 8);  // a heavy tail
  EXPECT_GT(median(mbps), 8);
  EXPECT_LT(median(mbps), 20);
}

TEST(DeviceModelTest, DeviceTraceErrorsNameTheFileAndLine) {
  const struct {
    std::string text;
    StatusCode code;
    std::string message;  // after the path
  } cases[] = {
      {"slowdown,bandwidth_mbps,latency_ms\n1,10,20\n# note\n2,x,20\n",
       StatusCode::kInvalidArgument, ":4: bandwidth_mbps: expected a finite number (got \"x\")"},
      {"slowdown,bandwidth_mbps,latency_ms\n1,10\n", StatusCode::kInvalidArgument,
       ":2: expected 3 comma-separated fields"},
      {"slowdown,bandwidth_mbps,latency_ms\n0,10,20\n", StatusCode::kInvalidArgument,
       ":2: slowdown: must be > 0"},
      {"slowdown,bandwidth_mbps,latency_ms\n1,10,-1\n", StatusCode::kInvalidArgument,
       ":2: latency_ms: must be >= 0"},
      {"slowdown,bandwidth_mbps,latency_ms\n1,inf,20\n", StatusCode::kInvalidArgument,
       ":2: bandwidth_mbps: expected a finite number"},
      {"# only a comment\nslowdown,bandwidth,latency_ms\n1,10,20\n", StatusCode::kInvalidArgument,
       ":2: the header has no column \"bandwidth_mbps\""},
      {"slowdown,bandwidth_mbps,latency_ms\n", StatusCode::kInvalidArgument, ": no device rows"},
      {"", StatusCode::kInvalidArgument, ": no header line"},
  };
  int n = 0;
  for (const auto& c : cases) {
    const std::string path = write_file("bad-" + std::to_string(n++) + ".csv", c.text);
    Result<DeviceOptions> options = parse({{"trace", path}});
    ASSERT_TRUE(options.ok());
    Result<std::unique_ptr<DeviceModel>> model = DeviceModel::create(*options, 1);
    ASSERT_FALSE(model.ok()) << c.text;
    EXPECT_EQ(model.status().code(), c.code) << c.text;
    EXPECT_NE(model.status().message().find(path + c.message), std::string::npos)
        << model.status().message();
  }
  Result<DeviceOptions> missing = parse({{"trace", "/nonexistent/devices.csv"}});
  ASSERT_TRUE(missing.ok());
  Result<std::unique_ptr<DeviceModel>> model = DeviceModel::create(*missing, 1);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kNotFound);
  EXPECT_NE(model.status().message().find("/nonexistent/devices.csv"), std::string::npos);
}

TEST(DeviceModelTest, AlwaysAvailableByDefault) {
  std::unique_ptr<DeviceModel> model = make(nlohmann::json::object());
  ASSERT_NE(model, nullptr);
  EXPECT_TRUE(model->available("client-1", 0));
  EXPECT_TRUE(model->available("client-1", 1e7));
  EXPECT_EQ(model->next_offline("client-1", 0, kInf), std::nullopt);
  EXPECT_EQ(model->next_online({"client-1", "client-2"}, 0), std::nullopt);
}

TEST(DeviceModelTest, AvailabilityTraceGivesOffIntervals) {
  const std::string path = write_file("availability.csv",
                                      "client,off_from_s,off_to_s\n"
                                      "client-1,10,20\n"
                                      "1,15,30\n"  // overlaps: client-1 is off over [10, 30)
                                      "client-2,50,inf\n"
                                      "client-2,5,6\n"
                                      "alice,0,4\n");
  std::unique_ptr<DeviceModel> model = make({{"availability", {{"trace", path}}}});
  ASSERT_NE(model, nullptr);
  EXPECT_TRUE(model->available("client-1", 9.99));
  EXPECT_FALSE(model->available("client-1", 10));
  EXPECT_FALSE(model->available("client-1", 25));
  EXPECT_TRUE(model->available("client-1", 30));
  EXPECT_FALSE(model->available("client-2", 5.5));
  EXPECT_TRUE(model->available("client-2", 6));
  EXPECT_FALSE(model->available("client-2", 1e9));  // gone for good
  EXPECT_FALSE(model->available("alice", 3));
  EXPECT_TRUE(model->available("client-3", 12));  // never listed: always on

  EXPECT_EQ(model->next_offline("client-1", 0, 100), 10.0);
  EXPECT_EQ(model->next_offline("client-1", 12, 100), 12.0);  // already off
  EXPECT_EQ(model->next_offline("client-1", 0, 10), std::nullopt);
  EXPECT_EQ(model->next_offline("client-1", 30, kInf), std::nullopt);
  EXPECT_EQ(model->next_offline("client-2", 7, kInf), 50.0);
  EXPECT_EQ(model->next_offline("client-3", 0, kInf), std::nullopt);

  EXPECT_EQ(model->next_online({"client-1"}, 12), 30.0);
  EXPECT_EQ(model->next_online({"client-1"}, 0), 30.0);  // on now: after its next off period
  EXPECT_EQ(model->next_online({"client-1", "client-2"}, 5.5), 6.0);
  EXPECT_EQ(model->next_online({"client-1", "client-2"}, 12), 30.0);
  EXPECT_EQ(model->next_online({"client-2"}, 60), std::nullopt);  // never back
  EXPECT_EQ(model->next_online({"client-3"}, 0), std::nullopt);
  EXPECT_EQ(model->next_online({"alice", "client-1"}, 1), 4.0);
}

TEST(DeviceModelTest, AvailabilityTraceErrorsNameTheLine) {
  const struct {
    std::string text;
    std::string message;
  } cases[] = {
      {"client,off_from_s,off_to_s\nclient-1,10,20\nclient-2,30,20\n",
       ":3: off_to_s: must be > off_from_s"},
      {"client,off_from_s,off_to_s\n\nclient-1,ten,20\n",
       ":3: off_from_s: expected a finite number"},
      {"client,off_from_s,off_to_s\nclient-1,-1,20\n", ":2: off_from_s: must be >= 0"},
      {"client,off_from_s,off_to_s\n,1,20\n", ":2: client: empty"},
      {"client,from,to\n", ":1: the header has no column \"off_from_s\""},
  };
  int n = 0;
  for (const auto& c : cases) {
    const std::string path = write_file("bad-availability-" + std::to_string(n++) + ".csv", c.text);
    Result<DeviceOptions> options = parse({{"availability", {{"trace", path}}}});
    ASSERT_TRUE(options.ok());
    Result<std::unique_ptr<DeviceModel>> model = DeviceModel::create(*options, 1);
    ASSERT_FALSE(model.ok()) << c.text;
    EXPECT_EQ(model.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(model.status().message().find(path + c.message), std::string::npos)
        << model.status().message();
  }
  // A header only: nobody is ever off.
  const std::string empty = write_file("availability-empty.csv", "client,off_from_s,off_to_s\n");
  std::unique_ptr<DeviceModel> model = make({{"availability", {{"trace", empty}}}});
  ASSERT_NE(model, nullptr);
  EXPECT_TRUE(model->available("client-0", 5));
}

const nlohmann::json kExponential = {
    {"availability", {{"model", "exponential"}, {"mean_on_s", 600}, {"mean_off_s", 200}}}};

// Seconds the client is on during [0, horizon), walked with next_offline and next_online.
double seconds_on(const DeviceModel& model, const std::string& id, double horizon) {
  double on = 0;
  double t = 0;
  while (t < horizon) {
    if (model.available(id, t)) {
      const std::optional<double> off = model.next_offline(id, t, horizon);
      const double end = off.value_or(horizon);
      EXPECT_GT(end, t);
      on += end - t;
      t = end;
    } else {
      const std::optional<double> back = model.next_online({id}, t);
      EXPECT_TRUE(back.has_value());
      if (!back.has_value()) return on;
      EXPECT_GT(*back, t);
      t = *back;
    }
  }
  return on;
}

TEST(DeviceModelTest, ExponentialAvailabilityIsOnForTheExpectedShareOfTime) {
  std::unique_ptr<DeviceModel> model = make(kExponential, /*seed=*/11);
  ASSERT_NE(model, nullptr);
  // 600 / (600 + 200) = 0.75, over 40 clients × ~125 on/off cycles each.
  const double horizon = 1e5;
  double on = 0;
  for (int i = 0; i < 40; ++i) on += seconds_on(*model, client(i), horizon);
  EXPECT_NEAR(on / (40 * horizon), 0.75, 0.02);

  // At t = 0 a client is on with the same probability.
  int on_at_start = 0;
  for (int i = 0; i < 2000; ++i) on_at_start += model->available(client(i), 0) ? 1 : 0;
  EXPECT_NEAR(on_at_start / 2000.0, 0.75, 0.03);

  // Going off and coming back: at an off time the client is off; at its return, on.
  const std::string id = client(3);
  const std::optional<double> off = model->next_offline(id, 1000, kInf);
  ASSERT_TRUE(off.has_value());
  EXPECT_FALSE(model->available(id, *off));
  const std::optional<double> back = model->next_online({id}, *off);
  ASSERT_TRUE(back.has_value());
  EXPECT_GT(*back, *off);
  EXPECT_FALSE(model->available(id, std::nextafter(*back, 0.0)));
  EXPECT_TRUE(model->available(id, *back));
}

TEST(DeviceModelTest, ExponentialAvailabilityDoesNotDependOnQueryOrder) {
  std::unique_ptr<DeviceModel> forward = make(kExponential, /*seed=*/4);
  std::unique_ptr<DeviceModel> backward = make(kExponential, /*seed=*/4);
  std::unique_ptr<DeviceModel> other_seed = make(kExponential, /*seed=*/5);
  ASSERT_TRUE(forward && backward && other_seed);
  // backward first looks far ahead, then at the clients in reverse order.
  for (int i = 9; i >= 0; --i) {
    EXPECT_EQ(backward->next_online({client(i)}, 20000).has_value(), true);
    backward->available(client(i), 15000);
  }
  int differs = 0;
  for (int i = 0; i < 10; ++i) {
    for (double t = 0; t < 20000; t += 97) {
      ASSERT_EQ(forward->available(client(i), t), backward->available(client(i), t))
          << client(i) << " at " << t;
      differs += forward->available(client(i), t) != other_seed->available(client(i), t) ? 1 : 0;
    }
    EXPECT_EQ(forward->next_offline(client(i), 5000, kInf),
              backward->next_offline(client(i), 5000, kInf));
    EXPECT_EQ(forward->next_online({client(i)}, 7000), backward->next_online({client(i)}, 7000));
  }
  EXPECT_GT(differs, 0);  // another seed, other periods
  // next_online over several clients is the earliest of theirs.
  std::optional<double> earliest;
  for (int i = 0; i < 10; ++i) {
    const std::optional<double> back = forward->next_online({client(i)}, 3000);
    ASSERT_TRUE(back.has_value());
    earliest = earliest.has_value() ? std::min(*earliest, *back) : *back;
  }
  std::vector<std::string> all;
  for (int i = 0; i < 10; ++i) all.push_back(client(i));
  EXPECT_EQ(backward->next_online(all, 3000), earliest);
}

}  // namespace
}  // namespace fedtail::coordinator
