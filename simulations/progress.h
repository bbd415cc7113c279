// Progress of a simulation: a one-line bar on a terminal (run, round i/R, elapsed, ETA, latest
// accuracy), plain log lines otherwise; and the logging set-up that goes with it (every log line
// to DIR/sim.log; on a terminal only warnings and errors on screen, printed above the bar).
//
// Thread-safe: rounds are reported from the coordinator's engine thread while the main thread
// ticks the clock.
#ifndef FEDTAIL_SIMULATIONS_PROGRESS_H_
#define FEDTAIL_SIMULATIONS_PROGRESS_H_

#include <chrono>
#include <mutex>
#include <optional>
#include <string>

#include "common/base/status.h"

namespace fedtail::simulation {

class Progress {
 public:
  // `total_rounds`: rounds of every run of the simulation; `done_rounds`: those already finished
  // by an earlier (resumed) attempt. `terminal`: draw a bar on stderr instead of log lines.
  Progress(int total_rounds, int done_rounds, bool terminal);

  // A run starts (or resumes after `first_round - 1` finished rounds).
  void begin_run(const std::string& name, int rounds, int first_round);
  // Round `round` of the current run ended; accuracies are fractions, absent when not evaluated.
  void round_done(int round, std::optional<double> accuracy, std::optional<double> personalized);
  // Redraws the bar (elapsed time); call about once a second. No-op without a terminal.
  void tick();
  // The current run ended (clears the bar).
  void end_run();
  // Writes `text` (one formatted log line, with its newline) above the bar.
  void print_above(const std::string& text);

  bool terminal() const { return terminal_; }

 private:
  std::string bar_locked() const;
  void draw_locked();
  std::string eta_locked() const;

  const bool terminal_;
  const int total_rounds_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();

  mutable std::mutex mu_;
  int done_rounds_ = 0;                 // guarded by mu_; of every run
  int rounds_this_session_ = 0;         // guarded by mu_; for the rate
  std::string run_;                     // guarded by mu_
  int run_rounds_ = 0;                  // guarded by mu_
  int run_round_ = 0;                   // guarded by mu_; the last finished round of the run
  std::optional<double> accuracy_;      // guarded by mu_
  std::optional<double> personalized_;  // guarded by mu_
  bool drawn_ = false;                  // guarded by mu_; a bar is on the screen
};

// Logging for fedtail-sim: the default logger writes every line at `level` and above to
// `log_file`, and to stderr — through `progress` (above its bar) at warn and above on a terminal,
// or at `level` otherwise. kInvalidArgument for a bad level, kIOError when the file cannot be
// opened. `progress` must outlive all logging.
Status init_simulation_logging(const std::string& level, const std::string& log_file,
                               Progress* progress);

// "1:02:03" or "4:05" for a number of seconds.
std::string format_duration(double seconds);

}  // namespace fedtail::simulation

#endif  // FEDTAIL_SIMULATIONS_PROGRESS_H_
