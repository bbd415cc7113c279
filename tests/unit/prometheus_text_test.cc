// coordinator/prometheus_text.h, checked with the strict parser of
// tests/support/prometheus_parser.h (whose rejections of malformed text are tested here too).
#include "coordinator/prometheus_text.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "tests/support/prometheus_parser.h"

namespace fedtail::coordinator {
namespace {

using test_support::parse_prometheus_text;
using test_support::PromText;

LiveSnapshot hand_made_snapshot() {
  LiveSnapshot s;
  s.run.run_id = "abc123";
  s.run.strategy = "fedavg";
  s.run.label = "fedavg \"seed\" 1\\2\nrun 2/6";  // every character that needs escaping
  s.run.rounds = 10;
  s.state = LiveRunState::kRunning;
  s.rounds_completed = 3;
  LiveProbe probe;
  probe.round = 4;
  probe.phase = "fit";
  probe.selected = 5;
  probe.received = 2;
  probe.clients_connected = 7;
  s.probe = probe;
  s.bytes_down = 123456789012ULL;
  s.bytes_up = 42;
  s.fit_failures = 2;
  s.round_seconds = {0.25, 3.0, 45.5};
  s.refusals = {{"late", 2}, {"non_finite", 1}, {"oversized", 0}};
  s.accuracy = {{"all", 0.4097}, {"many", 0.5}, {"medium", 0.25}, {"personalized", 0.75}};
  return s;
}

TEST(PrometheusText, HandMadeSnapshotParsesStrictlyWithExactValues) {
  const std::string text = prometheus_text(hand_made_snapshot());
  Result<PromText> parsed = parse_prometheus_text(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status().to_string() << "\n" << text;
  const PromText& p = *parsed;
  EXPECT_EQ(p.value("fedtail_run_info", {{"run_id", "abc123"},
                                         {"strategy", "fedavg"},
                                         {"label", "fedavg \"seed\" 1\\2\nrun 2/6"},
                                         {"state", "running"}}),
            1.0)
      << text;
  EXPECT_EQ(p.value("fedtail_rounds_planned"), 10.0);
  EXPECT_EQ(p.value("fedtail_round"), 4.0);
  EXPECT_EQ(p.value("fedtail_rounds_completed_total"), 3.0);
  EXPECT_EQ(p.value("fedtail_clients_connected"), 7.0);
  EXPECT_EQ(p.value("fedtail_clients_selected"), 5.0);
  EXPECT_EQ(p.value("fedtail_results_received"), 2.0);
  EXPECT_EQ(p.value("fedtail_bytes_down_total"), 123456789012.0);
  EXPECT_EQ(p.value("fedtail_bytes_up_total"), 42.0);
  EXPECT_EQ(p.value("fedtail_fit_failures_total"), 2.0);
  EXPECT_EQ(p.value("fedtail_refusals_total", {{"kind", "late"}}), 2.0);
  EXPECT_EQ(p.value("fedtail_refusals_total", {{"kind", "non_finite"}}), 1.0);
  EXPECT_EQ(p.value("fedtail_refusals_total", {{"kind", "oversized"}}), 0.0);
  // Buckets: 0.25 <= 0.5; 3.0 <= 5; 45.5 <= 60.
  EXPECT_EQ(p.value("fedtail_round_duration_seconds_bucket", {{"le", "0.5"}}), 1.0);
  EXPECT_EQ(p.value("fedtail_round_duration_seconds_bucket", {{"le", "2.5"}}), 1.0);
  EXPECT_EQ(p.value("fedtail_round_duration_seconds_bucket", {{"le", "5"}}), 2.0);
  EXPECT_EQ(p.value("fedtail_round_duration_seconds_bucket", {{"le", "30"}}), 2.0);
  EXPECT_EQ(p.value("fedtail_round_duration_seconds_bucket", {{"le", "60"}}), 3.0);
  EXPECT_EQ(p.value("fedtail_round_duration_seconds_bucket", {{"le", "+Inf"}}), 3.0);
  EXPECT_EQ(p.value("fedtail_round_duration_seconds_sum"), 48.75);
  EXPECT_EQ(p.value("fedtail_round_duration_seconds_count"), 3.0);
  EXPECT_EQ(p.value("fedtail_accuracy", {{"group", "all"}}), 0.4097);
  EXPECT_EQ(p.value("fedtail_accuracy", {{"group", "many"}}), 0.5);
  EXPECT_EQ(p.value("fedtail_accuracy", {{"group", "medium"}}), 0.25);
  EXPECT_EQ(p.value("fedtail_accuracy", {{"group", "personalized"}}), 0.75);
  EXPECT_FALSE(p.value("fedtail_accuracy", {{"group", "few"}}).has_value());
  // Every family has HELP and TYPE; the types are the documented ones.
  for (const auto& family : p.families) {
    EXPECT_TRUE(family.has_help) << family.name;
    EXPECT_TRUE(family.has_type) << family.name;
  }
  ASSERT_NE(p.family("fedtail_round_duration_seconds"), nullptr);
  EXPECT_EQ(p.family("fedtail_round_duration_seconds")->type, "histogram");
  EXPECT_EQ(p.family("fedtail_round_duration_seconds")->samples.size(),
            kRoundSecondsBuckets.size() + 3);
  ASSERT_NE(p.family("fedtail_refusals_total"), nullptr);
  EXPECT_EQ(p.family("fedtail_refusals_total")->type, "counter");
  ASSERT_NE(p.family("fedtail_accuracy"), nullptr);
  EXPECT_EQ(p.family("fedtail_accuracy")->type, "gauge");
}

TEST(PrometheusText, FinishedRunHasNoOpenPhaseAndAnEmptyHistogramIsValid) {
  LiveSnapshot s;
  s.run.run_id = "r";
  s.state = LiveRunState::kFinished;
  LiveProbe probe;
  probe.phase = "fit";
  probe.selected = 3;
  probe.clients_connected = 2;
  s.probe = probe;
  Result<PromText> parsed = parse_prometheus_text(prometheus_text(s));
  ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
  EXPECT_EQ(parsed->value("fedtail_clients_selected"), 0.0);
  EXPECT_EQ(parsed->value("fedtail_clients_connected"), 0.0);
  EXPECT_EQ(parsed->value("fedtail_round_duration_seconds_bucket", {{"le", "+Inf"}}), 0.0);
  EXPECT_EQ(parsed->value("fedtail_round_duration_seconds_count"), 0.0);
  EXPECT_EQ(
      parsed->value("fedtail_run_info",
                    {{"run_id", "r"}, {"strategy", ""}, {"label", ""}, {"state", "finished"}}),
      1.0);
}

TEST(PrometheusText, NumbersAndEscapes) {
  EXPECT_EQ(prometheus_number(3), "3");
  EXPECT_EQ(prometheus_number(-0.5), "-0.5");
  EXPECT_EQ(prometheus_number(0.1), "0.1");
  EXPECT_EQ(prometheus_number(0.40970000000000006), "0.40970000000000006");
  EXPECT_EQ(prometheus_number(1e300), "1e+300");
  EXPECT_EQ(prometheus_number(1e15), "1e+15");
  EXPECT_EQ(prometheus_number(HUGE_VAL), "+Inf");
  EXPECT_EQ(prometheus_number(-HUGE_VAL), "-Inf");
  EXPECT_EQ(prometheus_number(std::nan("")), "NaN");
  EXPECT_EQ(prometheus_label_escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

// ---- The parser's strictness ----

std::string parse_error(const std::string& text) {
  Result<PromText> parsed = parse_prometheus_text(text);
  return parsed.ok() ? "" : parsed.status().message();
}

TEST(PrometheusParser, AcceptsValidText) {
  const std::string text =
      "# A comment\n"
      "# HELP x_total Things \\\\ counted.\\n2nd line\n"
      "# TYPE x_total counter\n"
      "x_total{a=\"1\",b=\"q\\\"\"} 3 1700000000000\n"
      "x_total{a=\"2\",} 4\n"
      "\n"
      "# TYPE g gauge\n"
      "g NaN\n"
      "# TYPE h histogram\n"
      "h_bucket{le=\"1\"} 1\n"
      "h_bucket{le=\"+Inf\"} 2\n"
      "h_sum 3.5\n"
      "h_count 2\n"
      "untyped_thing -Inf\n";
  Result<PromText> parsed = parse_prometheus_text(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
  EXPECT_EQ(parsed->families.size(), 4u);
  EXPECT_EQ(parsed->family("x_total")->help, "Things \\ counted.\n2nd line");
  EXPECT_EQ(parsed->value("x_total", {{"a", "1"}, {"b", "q\""}}), 3.0);
  EXPECT_EQ(parsed->family("x_total")->samples[0].timestamp_ms, 1700000000000);
  EXPECT_TRUE(std::isnan(*parsed->value("g")));
  EXPECT_EQ(parsed->value("untyped_thing"), -HUGE_VAL);
  EXPECT_EQ(parsed->family("untyped_thing")->type, "untyped");
}

TEST(PrometheusParser, RejectsMalformedTextNamingTheLine) {
  // Each case: the text and the start of the expected error.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"x 1", "line 1: the last line does not end"},
      {"1x 1\n", "line 1: invalid metric name"},
      {"x-y 1\n", "line 1: expected a blank before the value"},
      {"x{1a=\"v\"} 1\n", "line 1: invalid label name"},
      {"x{__a=\"v\"} 1\n", "line 1: reserved label name"},
      {"x{a=\"v\",a=\"w\"} 1\n", "line 1: label a repeated"},
      {"x{a=\"v\\t\"} 1\n", "line 1: invalid escape \\t"},
      {"x{a=\"v} 1\n", "line 1: unterminated value"},
      {"x{a=v} 1\n", "line 1: expected '\"'"},
      {"x one\n", "line 1: invalid value \"one\""},
      {"x 0x10\n", "line 1: invalid value"},
      {"x 1 12.5\n", "line 1: invalid timestamp"},
      {"x 1 2 3\n", "line 1: unexpected text"},
      {"x 1\n# TYPE x gauge\n", "line 2: TYPE for x after its samples"},
      {"# HELP x a\n# HELP x b\nx 1\n", "line 2: second HELP"},
      {"# TYPE x gauge\n# TYPE x counter\n", "line 2: second TYPE"},
      {"# TYPE x gaug\n", "line 1: unknown type"},
      {"# TYPE x counter\nx -1\n", "line 2: counter x must be >= 0"},
      {"x 1\ny 1\nx{a=\"b\"} 2\n", "line 3: family x is not contiguous"},
      {"x 1\nx 2\n", "line 2: series x repeated"},
      {"x 1\r\n", "line 1: carriage return"},
      {"# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
       "line 2: h: the last bucket is not le=\"+Inf\""},
      {"# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\n"
       "h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
       "line 3: le not in increasing order"},
      {"# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
       "line 3: bucket counts not cumulative"},
      {"# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
       "line 4: h: _count differs from the +Inf bucket"},
      {"# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n", "line 2: h: no _sum"},
      {"# TYPE h histogram\nh_bucket{x=\"1\"} 2\n", "line 2: bucket without an \"le\" label"},
      {"# TYPE h histogram\nh 2\n", "line 2: histogram h has sample h"},
  };
  for (const auto& [text, expected] : cases) {
    const std::string error = parse_error(text);
    EXPECT_EQ(error.rfind(expected, 0), 0u) << "text:\n" << text << "error: " << error;
  }
}

}  // namespace
}  // namespace fedtail::coordinator
