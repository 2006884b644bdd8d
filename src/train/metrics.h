// Training metrics and logging: the fixed one-line step log of DESIGN.md, a JSONL metrics file,
// a terminal progress bar and the process memory figures.
//
// Step line (fields separated by " | "):
//   step 120/2000 | loss 3.412 | gnorm 0.91 | lr 2.2e-4 | 412 ms | 183k tok/s | MFU 41% | mem 61 GiB
//   loss   3 decimals;  gnorm 2 decimals in [0.01, 1000), else short scientific;
//   lr     short scientific, 2 significant digits ("2.2e-4", "1e-3");
//   time   milliseconds, 1 decimal below 10 ms;  tok/s 3 significant digits with k/M/G/T;
//   MFU    tokens/s * flops_per_token / peak_flops in whole percent, "MFU -" when either is unknown;
//   mem    MiB below 1 GiB, GiB with 1 decimal below 10 GiB, whole GiB above; "mem -" when 0.
// Non-finite numbers print as "nan" / "inf" / "-inf".
#pragma once

#include <cstdint>
#include <cstdio>
#include <chrono>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace frugal {

struct StepStats {
  int64_t step = 0;               // the step just finished (1-based)
  int64_t total_steps = 0;
  double loss = 0;
  double grad_norm = 0;
  double lr = 0;
  double step_seconds = 0;        // wall time of the step
  double tokens_per_second = 0;
  double flops_per_token = 0;     // model FLOPs per trained token (forward + backward); 0 = unknown
  double peak_flops = 0;          // peak FLOP/s of the hardware used; 0 = unknown
  int64_t memory_bytes = 0;       // device memory in use, or the process RSS on the CPU; 0 = unknown
};

std::string format_step_line(const StepStats& stats);

// The pieces of the step line, for other logs that want the same look.
std::string format_count(double value);         // 950, 1.83k, 183k, 12.3M, 4.00G
std::string format_short_sci(double value);     // 2.2e-4, 1e-3, 3.5e2, 0
std::string format_bytes(int64_t bytes);        // 212 MiB, 1.5 GiB, 61 GiB
std::string format_duration(double seconds);    // 0.4s, 12s, 3m04s, 2h05m

// Peak and current resident set size of this process in bytes (VmHWM / VmRSS of
// /proc/self/status); 0 where that file is unavailable.
int64_t peak_rss_bytes();
int64_t current_rss_bytes();

// Append-only JSON-lines metrics file: one object per line, flushed after every line so a crash
// loses nothing already written. Non-finite numbers are written as null (JSON has no NaN).
class MetricsLog {
 public:
  MetricsLog() = default;
  // Creates missing parent directories; truncates the file unless `append`.
  void open(const std::string& path, bool append);
  void write(const nlohmann::json& record);
  void close();
  bool is_open() const { return file_ != nullptr; }
  const std::string& path() const { return path_; }

 private:
  struct Closer {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::unique_ptr<std::FILE, Closer> file_;
  std::string path_;
};

// A one-line progress bar for long loops:  "label [#######-------]  45% 450/1000 12s eta 15s".
// The default constructor draws on stderr only when stderr is a terminal; otherwise every call is
// a no-op, so logs redirected to files stay clean. Redraws at most every 100 ms, and always on the
// last item; finish() (or the destructor) ends the line.
class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total);
  ProgressBar(std::string label, int64_t total, std::FILE* out, bool enabled);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void update(int64_t done);
  void finish();
  bool enabled() const { return enabled_; }

 private:
  void draw(int64_t done);

  std::string label_;
  int64_t total_;
  std::FILE* out_;
  bool enabled_;
  bool drawn_ = false;
  bool finished_ = false;
  int64_t last_done_ = 0;   // latest value given to update()
  int64_t drawn_done_ = 0;  // value shown by the latest draw
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace frugal
