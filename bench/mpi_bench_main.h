// The entry point of the benchmarks that run under mpirun (one process per GPU): MPI is
// initialized around `run`, and an exception on one rank aborts every rank with its message
// (the others would otherwise wait forever in a collective). Builds without CUDA, NCCL or MPI
// still compile every bench/*.cc: there the benchmark only says what it lacks.
#pragma once

#include <cstdio>
#include <exception>
#include <string>

#if defined(FRUGAL_HAVE_CUDA) && defined(FRUGAL_HAVE_NCCL) && defined(FRUGAL_HAVE_MPI)
#include "parallel/mpi_communicator.h"

namespace frugal {

inline int mpi_bench_main(const char* name, int (*run)(int, char**), int argc, char** argv) {
  mpi_init(&argc, &argv);
  int status = 0;
  try {
    status = run(argc, argv);
  } catch (const std::exception& e) {
    mpi_world_communicator()->abort(std::string(name) + ": " + e.what());
  }
  mpi_finalize();
  return status;
}

}  // namespace frugal

#else

namespace frugal {

inline int mpi_bench_main(const char* name, int (*)(int, char**), int, char**) {
  std::fprintf(stderr, "%s: this build lacks CUDA, NCCL or MPI\n", name);
  return 1;
}

}  // namespace frugal

#endif
