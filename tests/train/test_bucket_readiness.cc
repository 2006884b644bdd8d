// BucketReadiness (parallel/bucket_readiness.h), the planner of ZeRO-1's overlapped
// reduce-scatter. Lives in tests/train because tests/parallel holds only MPI programs. Checks:
// buckets reported when their last parameter becomes final, in ascending order, exactly once per
// cycle (also through mark_rest_final and take_pending), empty buckets with the first call,
// shared parameters, reset, the same reports from the same calls, and the errors (unknown,
// repeated, duplicated notifications; bad bucket lists) leaving the cycle unchanged.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "core/error.h"
#include "parallel/bucket_readiness.h"

namespace frugal {
namespace {

using Buckets = std::vector<std::vector<int64_t>>;
using Ids = std::vector<int64_t>;

TEST(BucketReadiness, ReportsABucketWhenItsLastParameterIsFinal) {
  // Like a flat layout cut into buckets: parameter 2 straddles buckets 0 and 1, 5 is a buffer.
  BucketReadiness plan(7, Buckets{{0, 1, 2}, {2, 3}, {4, 6}});
  EXPECT_EQ(plan.buckets(), 3);
  EXPECT_EQ(plan.mark_final(Ids{6}), Ids{});
  EXPECT_EQ(plan.mark_final(Ids{4, 3}), Ids{2});  // bucket 1 still waits for 2
  EXPECT_TRUE(plan.is_reported(2));
  EXPECT_FALSE(plan.is_reported(1));
  EXPECT_EQ(plan.mark_final(Ids{5}), Ids{});  // in no bucket
  EXPECT_EQ(plan.mark_final(Ids{2, 1}), Ids{1});
  EXPECT_EQ(plan.reported(), 2);
  EXPECT_EQ(plan.mark_final(Ids{0}), Ids{0});
  EXPECT_EQ(plan.reported(), 3);
  EXPECT_EQ(plan.take_pending(), Ids{});
}

TEST(BucketReadiness, SeveralBucketsAtOnceComeInAscendingOrder) {
  BucketReadiness plan(4, Buckets{{3}, {0}, {1, 2}, {3, 0}});
  EXPECT_EQ(plan.mark_final(Ids{3, 2, 0}), (Ids{0, 1, 3}));
  EXPECT_EQ(plan.mark_final(Ids{1}), Ids{2});
}

TEST(BucketReadiness, RestFinalAndTakePendingReportOnlyWhatIsLeft) {
  BucketReadiness plan(5, Buckets{{0}, {1, 2}, {3, 4}});
  EXPECT_EQ(plan.mark_final(Ids{3, 4}), Ids{2});
  EXPECT_EQ(plan.mark_rest_final(), (Ids{0, 1}));
  for (int64_t p = 0; p < 5; ++p) EXPECT_TRUE(plan.is_final(p));
  EXPECT_EQ(plan.mark_rest_final(), Ids{});  // nothing left: no report, no error
  EXPECT_EQ(plan.take_pending(), Ids{});

  plan.reset();
  EXPECT_FALSE(plan.started());
  EXPECT_EQ(plan.mark_final(Ids{0}), Ids{0});
  // The step launches the rest before the backward said so; a late notification reports nothing.
  EXPECT_EQ(plan.take_pending(), (Ids{1, 2}));
  EXPECT_EQ(plan.reported(), 3);
  EXPECT_EQ(plan.mark_final(Ids{1, 2, 3, 4}), Ids{});
}

TEST(BucketReadiness, EmptyBucketIsReadyWithTheFirstCall) {
  BucketReadiness plan(2, Buckets{{0}, {}, {1}});
  EXPECT_EQ(plan.mark_final(Ids{}), Ids{1});
  EXPECT_EQ(plan.mark_final(Ids{}), Ids{});
  EXPECT_EQ(plan.mark_final(Ids{1}), Ids{2});
  plan.reset();
  EXPECT_EQ(plan.mark_final(Ids{0}), (Ids{0, 1}));
}

TEST(BucketReadiness, ResetStartsANewCycle) {
  BucketReadiness plan(3, Buckets{{0, 1}, {2}});
  EXPECT_EQ(plan.mark_rest_final(), (Ids{0, 1}));
  plan.reset();
  EXPECT_EQ(plan.reported(), 0);
  EXPECT_FALSE(plan.is_final(0));
  EXPECT_EQ(plan.mark_final(Ids{0}), Ids{});
  EXPECT_EQ(plan.mark_final(Ids{1}), Ids{0});  // notifying 0 again after reset is no repeat
  EXPECT_EQ(plan.take_pending(), Ids{1});
}

TEST(BucketReadiness, RepeatsInsideABucketCountOnce) {
  BucketReadiness plan(2, Buckets{{1, 1, 0, 1}});
  EXPECT_EQ(plan.mark_final(Ids{1}), Ids{});
  EXPECT_EQ(plan.mark_final(Ids{0}), Ids{0});
}

TEST(BucketReadiness, UnknownRepeatedAndDuplicatedNotificationsThrowAndChangeNothing) {
  BucketReadiness plan(4, Buckets{{0, 1}, {2, 3}});
  EXPECT_THROW(plan.mark_final(Ids{4}), Error);
  EXPECT_THROW(plan.mark_final(Ids{-1}), Error);
  EXPECT_EQ(plan.mark_final(Ids{0}), Ids{});
  EXPECT_THROW(plan.mark_final(Ids{1, 0}), Error);  // 0 again: repeated
  EXPECT_FALSE(plan.is_final(1));                   // the failed call marked nothing
  EXPECT_THROW(plan.mark_final(Ids{2, 2}), Error);  // twice in one call
  EXPECT_FALSE(plan.is_final(2));
  EXPECT_THROW(plan.mark_final(Ids{3, 7}), Error);  // one unknown spoils the call
  EXPECT_FALSE(plan.is_final(3));
  EXPECT_EQ(plan.reported(), 0);
  EXPECT_EQ(plan.mark_final(Ids{1, 2, 3}), (Ids{0, 1}));
  try {
    plan.mark_final(Ids{9});
    FAIL() << "no error for an unknown parameter";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("parameter 9 is unknown"), std::string::npos) << e.what();
  }
  try {
    plan.mark_final(Ids{3});
    FAIL() << "no error for a repeated parameter";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("parameter 3 was already final"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(plan.is_final(4), Error);
  EXPECT_THROW(plan.is_reported(2), Error);
}

TEST(BucketReadiness, RejectsBucketsNamingUnknownParameters) {
  EXPECT_THROW(BucketReadiness(3, Buckets{{0}, {3}}), Error);
  EXPECT_THROW(BucketReadiness(3, Buckets{{-1}}), Error);
  EXPECT_THROW(BucketReadiness(-1, Buckets{}), Error);
}

// Random layouts and random notification orders (in groups, like a backward's layers): every
// bucket is reported exactly once, exactly when its last parameter became final, and the same
// calls give the same reports.
TEST(BucketReadiness, RandomOrdersReportEveryBucketOnceAtTheRightTime) {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t params = 1 + static_cast<int64_t>(rng() % 30);
    const int64_t bucket_count = 1 + static_cast<int64_t>(rng() % 8);
    Buckets buckets(static_cast<size_t>(bucket_count));
    for (auto& bucket : buckets) {
      const int64_t size = static_cast<int64_t>(rng() % 5);
      for (int64_t i = 0; i < size; ++i) bucket.push_back(static_cast<int64_t>(rng() % params));
    }
    Ids order(static_cast<size_t>(params));
    for (int64_t p = 0; p < params; ++p) order[static_cast<size_t>(p)] = p;
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<Ids> groups;
    for (size_t at = 0; at < order.size();) {
      const size_t take = std::min<size_t>(order.size() - at, 1 + rng() % 4);
      groups.emplace_back(order.begin() + static_cast<long>(at),
                          order.begin() + static_cast<long>(at + take));
      at += take;
    }
    auto play = [&](BucketReadiness& plan) {
      std::vector<Ids> reports;
      std::vector<char> done(static_cast<size_t>(params), 0);
      for (const Ids& group : groups) {
        reports.push_back(plan.mark_final(group));
        for (int64_t p : group) done[static_cast<size_t>(p)] = 1;
        for (size_t i = 1; i < reports.back().size(); ++i)
          EXPECT_LT(reports.back()[i - 1], reports.back()[i]);
        for (int64_t k = 0; k < bucket_count; ++k) {
          bool all = true;
          for (int64_t p : buckets[static_cast<size_t>(k)]) all = all && done[static_cast<size_t>(p)];
          EXPECT_EQ(plan.is_reported(k), all) << "trial " << trial << " bucket " << k;
        }
      }
      return reports;
    };
    BucketReadiness plan(params, buckets);
    const std::vector<Ids> first = play(plan);
    std::vector<int64_t> times_reported(static_cast<size_t>(bucket_count), 0);
    for (const Ids& report : first)
      for (int64_t k : report) ++times_reported[static_cast<size_t>(k)];
    for (int64_t count : times_reported) EXPECT_EQ(count, 1) << "trial " << trial;
    EXPECT_EQ(plan.take_pending(), Ids{});
    plan.reset();
    EXPECT_EQ(play(plan), first) << "trial " << trial;
  }
}

}  // namespace
}  // namespace frugal
