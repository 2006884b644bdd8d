// Step-line formatting (exact DESIGN.md shape, suffixes, short scientific lr), JSONL log,
// progress bar output and the RSS figures.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>

#include "test_util.h"
#include "train/metrics.h"

namespace frugal {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kGiB = int64_t{1} << 30;

TEST(StepLine, MatchesTheDesignShape) {
  StepStats s;
  s.step = 120;
  s.total_steps = 2000;
  s.loss = 3.41249;
  s.grad_norm = 0.9134;
  s.lr = 2.2e-4;
  s.step_seconds = 0.4121;
  s.tokens_per_second = 183400;
  s.flops_per_token = 1e6;
  s.peak_flops = 183400.0 * 1e6 / 0.41;  // 41% utilisation
  s.memory_bytes = 61 * kGiB;
  EXPECT_EQ(format_step_line(s),
            "step 120/2000 | loss 3.412 | gnorm 0.91 | lr 2.2e-4 | 412 ms | 183k tok/s | MFU 41% | "
            "mem 61 GiB");
  s.peak_flops = 0;
  s.memory_bytes = 0;
  s.loss = std::numeric_limits<double>::quiet_NaN();
  s.grad_norm = std::numeric_limits<double>::infinity();
  s.step_seconds = 0.00346;
  EXPECT_EQ(format_step_line(s),
            "step 120/2000 | loss nan | gnorm inf | lr 2.2e-4 | 3.5 ms | 183k tok/s | MFU - | mem -");
  s.grad_norm = 0.0012;
  s.memory_bytes = 212 * (int64_t{1} << 20);
  EXPECT_NE(format_step_line(s).find("| gnorm 1.2e-3 |"), std::string::npos);
  EXPECT_NE(format_step_line(s).find("| mem 212 MiB"), std::string::npos);
}

TEST(StepLine, CountsUseThreeSignificantDigitsAndSuffixes) {
  EXPECT_EQ(format_count(0), "0");
  EXPECT_EQ(format_count(950), "950");
  EXPECT_EQ(format_count(999.4), "999");
  EXPECT_EQ(format_count(999.6), "1.00k");
  EXPECT_EQ(format_count(1834), "1.83k");
  EXPECT_EQ(format_count(18340), "18.3k");
  EXPECT_EQ(format_count(183400), "183k");
  EXPECT_EQ(format_count(999600), "1.00M");
  EXPECT_EQ(format_count(12345678), "12.3M");
  EXPECT_EQ(format_count(4e9), "4.00G");
  EXPECT_EQ(format_count(2.5e12), "2.50T");
}

TEST(StepLine, ShortScientific) {
  EXPECT_EQ(format_short_sci(2.2e-4), "2.2e-4");
  EXPECT_EQ(format_short_sci(1e-3), "1e-3");
  EXPECT_EQ(format_short_sci(7.3e-6), "7.3e-6");
  EXPECT_EQ(format_short_sci(9.96e-5), "1e-4");   // rounding carries into the exponent
  EXPECT_EQ(format_short_sci(2.26e-5), "2.3e-5");
  EXPECT_EQ(format_short_sci(350), "3.5e2");
  EXPECT_EQ(format_short_sci(-1.5e-3), "-1.5e-3");
  EXPECT_EQ(format_short_sci(0), "0");
}

TEST(StepLine, BytesAndDurations) {
  EXPECT_EQ(format_bytes(212 * (int64_t{1} << 20)), "212 MiB");
  EXPECT_EQ(format_bytes(3 * kGiB / 2), "1.5 GiB");
  EXPECT_EQ(format_bytes(61 * kGiB), "61 GiB");
  EXPECT_EQ(format_duration(0.42), "0.4s");
  EXPECT_EQ(format_duration(12.2), "12s");
  EXPECT_EQ(format_duration(184), "3m04s");
  EXPECT_EQ(format_duration(7500), "2h05m");
}

using ::frugal::testing::TempDir;

std::vector<nlohmann::json> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> records;
  std::string line;
  while (std::getline(in, line)) records.push_back(nlohmann::json::parse(line));
  return records;
}

TEST(MetricsLog, WritesOneFlushedObjectPerLine) {
  TempDir dir;
  const std::string path = dir.file("run/nested/metrics.jsonl");
  MetricsLog log;
  log.open(path, false);
  log.write({{"step", 1}, {"loss", 3.5}});
  // Flushed: readable before close.
  ASSERT_EQ(read_lines(path).size(), 1u);
  log.write({{"step", 2}, {"loss", std::numeric_limits<double>::quiet_NaN()},
             {"sample", std::string("ok \xff")}});
  log.close();
  log.open(path, true);
  log.write({{"step", 3}});
  log.close();
  auto records = read_lines(path);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0]["loss"], 3.5);
  EXPECT_TRUE(records[1]["loss"].is_null());
  EXPECT_EQ(records[2]["step"], 3);
  log.open(path, false);  // without append the file starts over
  log.write({{"step", 1}});
  EXPECT_EQ(read_lines(path).size(), 1u);

  MetricsLog unopened;
  EXPECT_THROW(unopened.write({{"a", 1}}), Error);
  MetricsLog bad;
  try {
    bad.open(dir.file(""), false);  // a directory
    ADD_FAILURE() << "opening a directory should fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("metrics file"), std::string::npos) << e.what();
  }
}

std::string read_all(std::FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string text;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, f)) > 0) text.append(buffer, n);
  return text;
}

TEST(ProgressBar, DrawsWhenEnabledAndStaysSilentOtherwise) {
  std::FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  {
    ProgressBar bar("tokenize", 10, out, true);
    EXPECT_TRUE(bar.enabled());
    bar.update(5);
    bar.update(10);
  }
  std::string text = read_all(out);
  EXPECT_NE(text.find("\rtokenize [###############---------------]  50% 5/10"), std::string::npos)
      << text;
  const size_t full = text.find("100% 10/10");
  EXPECT_NE(full, std::string::npos) << text;
  EXPECT_EQ(text.find("100% 10/10", full + 1), std::string::npos) << "drawn twice: " << text;
  EXPECT_EQ(text.back(), '\n');
  std::fclose(out);

  std::FILE* silent = std::tmpfile();
  {
    ProgressBar bar("quiet", 3, silent, false);
    for (int i = 1; i <= 3; ++i) bar.update(i);
    bar.finish();
  }
  EXPECT_EQ(read_all(silent), "");
  std::fclose(silent);

  ProgressBar standard("stderr", 1);
  EXPECT_EQ(standard.enabled(), isatty(STDERR_FILENO) != 0);
}

TEST(Memory, PeakRssCoversTouchedMemory) {
  const int64_t before = peak_rss_bytes();
  ASSERT_GT(before, 0);
  std::vector<char> block(64 << 20);
  for (size_t i = 0; i < block.size(); i += 4096) block[i] = static_cast<char>(i);
  const int64_t current = current_rss_bytes();
  const int64_t after = peak_rss_bytes();
  EXPECT_GE(current, int64_t{60} << 20);
  EXPECT_GE(after, current);
  EXPECT_GE(after, before);
  EXPECT_EQ(block[4096], static_cast<char>(4096));
}

}  // namespace
}  // namespace frugal
