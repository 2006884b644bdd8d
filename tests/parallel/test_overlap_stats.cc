// The interval arithmetic of the overlap measurement (parallel/overlap_stats.h), on the host:
// unions and intersections of disjoint, nested, partially overlapping, touching, empty and many
// intervals (against a brute-force count on a fine grid), and the line the engine logs. Runs under
// mpirun with one rank (tests/parallel), needs no GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "parallel/overlap_stats.h"

namespace frugal {
namespace {

using Intervals = std::vector<TimeInterval>;

TEST(OverlapStats, MergeSortsJoinsAndDropsEmpty) {
  const Intervals merged = merge_intervals({{5, 7}, {1, 2}, {2, 3}, {6, 9}, {4, 4}, {8, 3}});
  ASSERT_EQ(merged.size(), 2u);  // [1,3] (touching joined), [5,9]; [4,4] and [8,3] are empty
  EXPECT_EQ(merged[0].begin, 1);
  EXPECT_EQ(merged[0].end, 3);
  EXPECT_EQ(merged[1].begin, 5);
  EXPECT_EQ(merged[1].end, 9);
  EXPECT_TRUE(merge_intervals({}).empty());
}

TEST(OverlapStats, UnionCountsOverlapsOnce) {
  EXPECT_DOUBLE_EQ(union_length({{0, 1}, {2, 4}}), 3.0);          // disjoint
  EXPECT_DOUBLE_EQ(union_length({{0, 10}, {2, 3}, {4, 6}}), 10.0);  // nested
  EXPECT_DOUBLE_EQ(union_length({{0, 4}, {3, 6}}), 6.0);           // partial
  EXPECT_DOUBLE_EQ(union_length({}), 0.0);
}

TEST(OverlapStats, IntersectionOfDisjointNestedAndPartialIntervals) {
  EXPECT_DOUBLE_EQ(intersection_length({{0, 1}}, {{2, 3}}), 0.0);       // disjoint
  EXPECT_DOUBLE_EQ(intersection_length({{0, 1}}, {{1, 3}}), 0.0);       // touching
  EXPECT_DOUBLE_EQ(intersection_length({{2, 3}}, {{0, 10}}), 1.0);      // a inside b
  EXPECT_DOUBLE_EQ(intersection_length({{0, 10}}, {{2, 3}}), 1.0);      // b inside a
  EXPECT_DOUBLE_EQ(intersection_length({{0, 4}}, {{3, 6}}), 1.0);       // partial
  EXPECT_DOUBLE_EQ(intersection_length({{3, 6}}, {{0, 4}}), 1.0);       // partial, swapped
  EXPECT_DOUBLE_EQ(intersection_length({{0, 4}}, {}), 0.0);             // nothing to hide under
  // b's own overlaps count once: [1,5] and [2,6] cover [1,6] of a = [0,10].
  EXPECT_DOUBLE_EQ(intersection_length({{0, 10}}, {{1, 5}, {2, 6}}), 5.0);
  // One comm interval spanning several busy ones, and the other way round.
  EXPECT_DOUBLE_EQ(intersection_length({{0, 10}}, {{1, 2}, {3, 5}, {9, 12}}), 4.0);
  EXPECT_DOUBLE_EQ(intersection_length({{1, 2}, {3, 5}, {9, 12}}, {{0, 10}}), 4.0);
}

// Many random intervals against a count on a grid of 1/8 ms (every endpoint lies on it).
TEST(OverlapStats, ManyIntervalsMatchAGridCount) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> start(0, 800), length(0, 60);
  for (int trial = 0; trial < 20; ++trial) {
    Intervals a, b;
    std::vector<char> in_a(900, 0), in_b(900, 0);
    for (int n = 0; n < 40; ++n)
      for (auto [set, mask] : {std::pair{&a, &in_a}, std::pair{&b, &in_b}}) {
        const int s = start(rng), l = length(rng);
        set->push_back({s / 8.0, (s + l) / 8.0});
        for (int c = s; c < s + l; ++c) (*mask)[static_cast<size_t>(c)] = 1;
      }
    int count_a = 0, count_both = 0;
    for (size_t c = 0; c < in_a.size(); ++c) {
      count_a += in_a[c];
      count_both += in_a[c] && in_b[c];
    }
    EXPECT_DOUBLE_EQ(union_length(a), count_a / 8.0) << "trial " << trial;
    EXPECT_DOUBLE_EQ(intersection_length(a, b), count_both / 8.0) << "trial " << trial;
    const OverlapTotals t = measure_overlap(a, b);
    EXPECT_DOUBLE_EQ(t.comm_ms, count_a / 8.0);
    EXPECT_DOUBLE_EQ(t.hidden_ms, count_both / 8.0);
    EXPECT_GE(t.hidden_fraction(), 0.0);
    EXPECT_LE(t.hidden_fraction(), 1.0);
  }
}

TEST(OverlapStats, DescribeSumsTheExchangesPerStep) {
  ExchangeOverlap overlap;
  overlap.dispatch = {10.0, 5.0};  // 50%
  overlap.combine = {8.0, 2.0};    // 25%
  overlap.counts = {2.0, 0.0};
  ExchangeOverlap twice = overlap;
  twice += overlap;
  EXPECT_DOUBLE_EQ(twice.total().comm_ms, 40.0);
  EXPECT_DOUBLE_EQ(twice.total().hidden_ms, 14.0);
  // 40 ms over 2 steps; 14/40 = 35% hidden.
  const std::string line = describe_overlap(twice, 2);
  EXPECT_NE(line.find("all-to-all 20.00 ms/step, 35% hidden under computation"), std::string::npos)
      << line;
  EXPECT_NE(line.find("dispatch 50%"), std::string::npos) << line;
  EXPECT_NE(line.find("combine 25%"), std::string::npos) << line;
  EXPECT_EQ(OverlapTotals{}.hidden_fraction(), 0.0);
}

}  // namespace
}  // namespace frugal
