// The coordinator's metrics in the Prometheus text exposition format, version 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/), served at /metrics by the HTTP
// dashboard (coordinator/http_dashboard.h). A pure function of a LiveSnapshot.
//
// Families (each with # HELP and # TYPE, in this order; a family without samples has only those):
//   fedtail_run_info{run_id,strategy,label,state}  gauge: 1 for the current run
//   fedtail_rounds_planned                         gauge
//   fedtail_round                                  gauge: the round in progress (or last done)
//   fedtail_rounds_completed_total                 counter: metrics lines written
//   fedtail_clients_connected                      gauge: clients of live sessions
//   fedtail_clients_selected                       gauge: tasks of the open phase (0 when none)
//   fedtail_results_received                       gauge: accepted results of the open phase
//   fedtail_bytes_down_total, fedtail_bytes_up_total  counters: payload bytes of finished rounds
//   fedtail_fit_failures_total                     counter: fit failures of finished rounds
//   fedtail_refusals_total{kind}                   counter: refused inputs, by kind
//   fedtail_round_duration_seconds                 histogram: each finished round's "seconds"
//   fedtail_accuracy{group}                        gauge: latest; group all, many, medium, few
//                                                  (server-side generic evaluation), personalized
// Counters restart from zero when a new run begins in the same process (LiveStatus::begin_run):
// Prometheus treats that as a counter reset.
#ifndef FEDTAIL_COORDINATOR_PROMETHEUS_TEXT_H_
#define FEDTAIL_COORDINATOR_PROMETHEUS_TEXT_H_

#include <array>
#include <string>

#include "coordinator/live_status.h"

namespace fedtail::coordinator {

// The Content-Type of the text format.
inline constexpr char kPrometheusContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// Upper bounds (seconds) of fedtail_round_duration_seconds' buckets, before "+Inf".
inline constexpr std::array<double, 11> kRoundSecondsBuckets = {0.5, 1,   2.5, 5,   10,  30,
                                                                60,  120, 300, 600, 1800};

// The exposition text of `snapshot`: lines ending in '\n'.
std::string prometheus_text(const LiveSnapshot& snapshot);

// A sample value as the format writes it: integers without a fraction, other numbers in the
// shortest form that reads back exactly, "+Inf", "-Inf", "NaN".
std::string prometheus_number(double value);

// `value` escaped for a label value: backslash, double quote and newline as \\, \" and \n.
std::string prometheus_label_escape(const std::string& value);

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_PROMETHEUS_TEXT_H_
