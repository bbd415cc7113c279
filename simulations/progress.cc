#include "simulations/progress.h"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>

namespace fedtail::simulation {
namespace {

constexpr int kBarWidth = 24;

std::string percent(std::optional<double> fraction) {
  if (!fraction) return "-";
  char text[16];
  std::snprintf(text, sizeof(text), "%.2f%%", *fraction * 100);
  return text;
}

// Formats log lines with spdlog's formatter and prints them through Progress (above its bar).
class ProgressSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit ProgressSink(Progress* progress) : progress_(progress) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    progress_->print_above(std::string(formatted.data(), formatted.size()));
  }
  void flush_() override { std::fflush(stderr); }

 private:
  Progress* const progress_;
};

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) seconds = 0;
  const long total = std::lround(seconds);
  char text[32];
  if (total >= 3600) {
    std::snprintf(text, sizeof(text), "%ld:%02ld:%02ld", total / 3600, total / 60 % 60, total % 60);
  } else {
    std::snprintf(text, sizeof(text), "%ld:%02ld", total / 60, total % 60);
  }
  return text;
}

Progress::Progress(int total_rounds, int done_rounds, bool terminal)
    : terminal_(terminal), total_rounds_(total_rounds), done_rounds_(done_rounds) {}

void Progress::begin_run(const std::string& name, int rounds, int first_round) {
  std::unique_lock<std::mutex> lock(mu_);
  run_ = name;
  run_rounds_ = rounds;
  run_round_ = first_round - 1;
  accuracy_.reset();
  personalized_.reset();
  if (terminal_) {
    draw_locked();
  } else {
    lock.unlock();  // logging comes back through print_above
    spdlog::info("{}: {} {} rounds", name, first_round > 1 ? "resuming after round" : "starting,",
                 first_round > 1 ? std::to_string(first_round - 1) + " of " + std::to_string(rounds)
                                 : std::to_string(rounds));
  }
}

std::string Progress::eta_locked() const {
  if (rounds_this_session_ == 0) return "?";
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  return format_duration(elapsed / rounds_this_session_ * (total_rounds_ - done_rounds_));
}

void Progress::round_done(int round, std::optional<double> accuracy,
                          std::optional<double> personalized) {
  std::unique_lock<std::mutex> lock(mu_);
  run_round_ = round;
  ++done_rounds_;
  ++rounds_this_session_;
  if (accuracy) accuracy_ = accuracy;
  if (personalized) personalized_ = personalized;
  if (terminal_) {
    draw_locked();
    return;
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  const std::string run = run_, eta = eta_locked();
  const int run_rounds = run_rounds_, done = done_rounds_;
  const std::optional<double> shown_accuracy = accuracy_, shown_personalized = personalized_;
  lock.unlock();  // logging comes back through print_above
  spdlog::info(
      "{}: round {}/{} done; accuracy {}, personalized {}; simulation {}/{} rounds, {} "
      "elapsed, ETA {}",
      run, round, run_rounds, percent(shown_accuracy), percent(shown_personalized), done,
      total_rounds_, format_duration(elapsed), eta);
}

void Progress::tick() {
  if (!terminal_) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (!run_.empty()) draw_locked();
}

void Progress::end_run() {
  std::lock_guard<std::mutex> lock(mu_);
  if (terminal_ && drawn_) std::fputs("\r\033[K", stderr);
  drawn_ = false;
  run_.clear();
}

void Progress::print_above(const std::string& text) {
  std::lock_guard<std::mutex> lock(mu_);
  if (terminal_ && drawn_) std::fputs("\r\033[K", stderr);
  std::fwrite(text.data(), 1, text.size(), stderr);
  drawn_ = false;
  if (terminal_ && !run_.empty()) draw_locked();
}

std::string Progress::bar_locked() const {
  const int filled = run_rounds_ > 0 ? kBarWidth * run_round_ / run_rounds_ : 0;
  std::string bar(filled, '#');
  bar.resize(kBarWidth, '.');
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  char text[512];
  std::snprintf(text, sizeof(text), "%s  round %d/%d [%s]  all %d/%d  %s elapsed, ETA %s  acc %s",
                run_.c_str(), run_round_, run_rounds_, bar.c_str(), done_rounds_, total_rounds_,
                format_duration(elapsed).c_str(), eta_locked().c_str(), percent(accuracy_).c_str());
  std::string line = text;
  if (personalized_) line += "  pers " + percent(personalized_);
  return line;
}

void Progress::draw_locked() {
  const std::string line = bar_locked();
  std::fprintf(stderr, "\r\033[K%s", line.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

Status init_simulation_logging(const std::string& level, const std::string& log_file,
                               Progress* progress) {
  auto parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off") {
    return Status::InvalidArgument(
        "--log-level: must be one of trace, debug, info, warn, error, off (got \"" + level + "\")");
  }
  std::shared_ptr<spdlog::sinks::basic_file_sink_mt> file;
  try {
    file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_file, /*truncate=*/false);
  } catch (const spdlog::spdlog_ex& e) {
    return Status::IOError(log_file + ": cannot open the log: " + e.what());
  }
  file->set_level(parsed);
  auto screen = std::make_shared<ProgressSink>(progress);
  screen->set_level(progress->terminal() ? std::max(parsed, spdlog::level::warn) : parsed);
  spdlog::drop("fedtail-sim");
  auto logger =
      std::make_shared<spdlog::logger>("fedtail-sim", spdlog::sinks_init_list{file, screen});
  logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%n] [%^%l%$] %v");
  logger->set_level(parsed);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
  return Status::OK();
}

}  // namespace fedtail::simulation
