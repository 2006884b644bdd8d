// main() of the multi-process tests (tests/parallel): MPI up, GoogleTest, MPI down. Every rank
// runs every test; a test's collective calls must match across ranks. Ranks other than 0 print
// only failures, so the log of a passing run is one rank's.
#include <gtest/gtest.h>

#include "parallel/mpi_communicator.h"

namespace {

// Prints a failed assertion with the rank that saw it.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (result.failed())
      std::fprintf(stderr, "rank %d: %s:%d: %s\n", rank_, result.file_name() ? result.file_name() : "?",
                   result.line_number(), result.summary());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  frugal::mpi_init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  {
    auto world = frugal::mpi_world_communicator();
    rank = world->rank();
  }
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  const int failed = RUN_ALL_TESTS();
  frugal::mpi_finalize();
  return failed;
}
