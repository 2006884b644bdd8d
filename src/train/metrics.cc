// Step-line formatting, JSONL metrics, progress bar and RSS figures (see metrics.h).
#include "train/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace frugal {
namespace {

// "nan", "inf" or "-inf" for non-finite values, empty otherwise.
std::string non_finite(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return "";
}

std::string format_grad_norm(double value) {
  if (!std::isfinite(value)) return non_finite(value);
  const double magnitude = std::fabs(value);
  if (magnitude == 0.0 || (magnitude >= 0.01 && magnitude < 1000.0))
    return fmt::format("{:.2f}", value);
  return format_short_sci(value);
}

std::string format_milliseconds(double seconds) {
  if (!std::isfinite(seconds)) return non_finite(seconds);
  const double ms = seconds * 1e3;
  return ms < 10.0 ? fmt::format("{:.1f}", ms) : fmt::format("{:.0f}", ms);
}

// A "Vm...:   1234 kB" line of /proc/self/status in bytes; 0 when absent.
int64_t proc_status_kb(const char* key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const size_t key_length = std::strlen(key);
  while (std::getline(status, line)) {
    if (line.compare(0, key_length, key) != 0 || line.size() <= key_length || line[key_length] != ':')
      continue;
    return std::strtoll(line.c_str() + key_length + 1, nullptr, 10) * 1024;
  }
  return 0;
}

}  // namespace

std::string format_short_sci(double value) {
  if (!std::isfinite(value)) return non_finite(value);
  if (value == 0.0) return "0";
  const std::string text = fmt::format("{:.1e}", value);  // e.g. "2.2e-04"
  const size_t e = text.find('e');
  std::string mantissa = text.substr(0, e);
  if (mantissa.size() >= 2 && mantissa.compare(mantissa.size() - 2, 2, ".0") == 0)
    mantissa.resize(mantissa.size() - 2);
  return fmt::format("{}e{}", mantissa, std::stoi(text.substr(e + 1)));
}

std::string format_count(double value) {
  if (!std::isfinite(value)) return non_finite(value);
  if (value < 0) return "-" + format_count(-value);
  if (value == 0.0) return "0";
  // Round to 3 significant digits first, so that 999.6k becomes 1.00M rather than 1000k.
  const double exponent = std::floor(std::log10(value));
  const double step = std::pow(10.0, exponent - 2);
  double rounded = std::round(value / step) * step;
  if (rounded < 1000.0) return fmt::format("{:.0f}", value);
  static const char* const kSuffixes[] = {"k", "M", "G", "T", "P"};
  double scale = 1000.0;
  int unit = 0;
  while (unit < 4 && rounded >= scale * 1000.0 * (1.0 - 1e-12)) {
    scale *= 1000.0;
    ++unit;
  }
  const double scaled = rounded / scale;
  const int decimals = scaled < 9.995 ? 2 : (scaled < 99.95 ? 1 : 0);
  return fmt::format("{:.{}f}{}", scaled, decimals, kSuffixes[unit]);
}

std::string format_bytes(int64_t bytes) {
  constexpr double kMiB = 1024.0 * 1024.0, kGiB = kMiB * 1024.0;
  const double b = static_cast<double>(bytes);
  if (b < kGiB) return fmt::format("{:.0f} MiB", b / kMiB);
  if (b < 10 * kGiB) return fmt::format("{:.1f} GiB", b / kGiB);
  return fmt::format("{:.0f} GiB", b / kGiB);
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds)) return non_finite(seconds);
  if (seconds < 10.0) return fmt::format("{:.1f}s", seconds);
  if (seconds < 60.0) return fmt::format("{:.0f}s", seconds);
  const int64_t whole = static_cast<int64_t>(std::llround(seconds));
  if (whole < 3600) return fmt::format("{}m{:02}s", whole / 60, whole % 60);
  return fmt::format("{}h{:02}m", whole / 3600, (whole % 3600) / 60);
}

std::string format_step_line(const StepStats& s) {
  std::string loss = std::isfinite(s.loss) ? fmt::format("{:.3f}", s.loss) : non_finite(s.loss);
  std::string mfu = "-";
  if (s.peak_flops > 0.0 && s.flops_per_token > 0.0 && std::isfinite(s.tokens_per_second))
    mfu = fmt::format("{:.0f}%", 100.0 * s.tokens_per_second * s.flops_per_token / s.peak_flops);
  std::string memory = s.memory_bytes > 0 ? format_bytes(s.memory_bytes) : "-";
  return fmt::format("step {}/{} | loss {} | gnorm {} | lr {} | {} ms | {} tok/s | MFU {} | mem {}",
                     s.step, s.total_steps, loss, format_grad_norm(s.grad_norm),
                     format_short_sci(s.lr), format_milliseconds(s.step_seconds),
                     format_count(s.tokens_per_second), mfu, memory);
}

int64_t peak_rss_bytes() { return proc_status_kb("VmHWM"); }
int64_t current_rss_bytes() { return proc_status_kb("VmRSS"); }

void MetricsLog::open(const std::string& path, bool append) {
  close();
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code error;
    std::filesystem::create_directories(parent, error);
    FRUGAL_CHECK(!error, "cannot create the directory of metrics file {}: {}", path,
                 error.message());
  }
  errno = 0;
  file_.reset(std::fopen(path.c_str(), append ? "ab" : "wb"));
  FRUGAL_CHECK(file_ != nullptr, "cannot open metrics file {}: {}", path, std::strerror(errno));
  path_ = path;
}

void MetricsLog::write(const nlohmann::json& record) {
  FRUGAL_CHECK(file_ != nullptr, "metrics log: write before open");
  // Replace: invalid UTF-8 in a string (say, a decoded sample) must not abort the run.
  std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  line.push_back('\n');
  errno = 0;
  const bool ok = std::fwrite(line.data(), 1, line.size(), file_.get()) == line.size() &&
                  std::fflush(file_.get()) == 0;
  FRUGAL_CHECK(ok, "cannot write metrics file {}: {}", path_, std::strerror(errno));
}

void MetricsLog::close() {
  file_.reset();
}

ProgressBar::ProgressBar(std::string label, int64_t total)
    : ProgressBar(std::move(label), total, stderr, isatty(STDERR_FILENO) != 0) {}

ProgressBar::ProgressBar(std::string label, int64_t total, std::FILE* out, bool enabled)
    : label_(std::move(label)),
      total_(total),
      out_(out),
      enabled_(enabled && out != nullptr),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() {
  if (!finished_) finish();
}

void ProgressBar::update(int64_t done) {
  if (!enabled_ || finished_) return;
  last_done_ = done;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  draw(done);
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  if (!drawn_ || drawn_done_ != last_done_) draw(last_done_);
  std::fputc('\n', out_);
  std::fflush(out_);
}

void ProgressBar::draw(int64_t done) {
  constexpr int kWidth = 30;
  const double fraction =
      total_ > 0 ? std::clamp(static_cast<double>(done) / static_cast<double>(total_), 0.0, 1.0) : 1.0;
  const int filled = static_cast<int>(fraction * kWidth);
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::string line = fmt::format("\r{} [{}{}] {:3.0f}% {}/{} {}", label_, std::string(filled, '#'),
                                 std::string(kWidth - filled, '-'), 100.0 * fraction, done, total_,
                                 format_duration(elapsed));
  if (done > 0 && done < total_)
    line += " eta " + format_duration(elapsed * static_cast<double>(total_ - done) / static_cast<double>(done));
  line += "\x1b[K";  // clear what a longer previous line left behind
  std::fputs(line.c_str(), out_);
  std::fflush(out_);
  drawn_ = true;
  drawn_done_ = done;
}

}  // namespace frugal
