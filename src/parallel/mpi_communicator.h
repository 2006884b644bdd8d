// The MPI communicator: the Communicator interface (communicator.h) over an MPI communicator, for
// host (CPU) buffers. Built only when CMake finds MPI (FRUGAL_HAVE_MPI); nothing here includes
// mpi.h, so callers compile without it.
//
// Determinism: every sum is computed by this code in rank order (rank 0's value, + rank 1's, ...,
// one rounding per addition; BF16 sums accumulate in fp32 and round once), after the data moved
// through point-to-point messages. MPI's own reductions are never used, so the result does not
// depend on the transport, the message timing or the MPI library's algorithm choice:
//   all_reduce_sum      reduce-scatter of blocks then all-gather (each rank sums one block)
//   reduce_scatter_sum  every rank sends chunk r to rank r, which sums the chunks in rank order
//   all_gather, all_to_all_v, broadcast, send, recv: plain data movement
// Large buffers move in pieces (messages of at most 1 GiB; reductions staged in pieces of
// kReducePieceBytes per peer), so counts beyond 2^31 elements work.
//
// Errors: the communicator uses MPI_ERRORS_RETURN; a failing MPI call throws frugal::Error naming
// the operation, the MPI function, this rank and MPI's description. abort() prints the message
// with the rank and calls MPI_Abort on MPI_COMM_WORLD, which ends every rank of the job.
// User send/recv travel on a duplicate of the communicator, so their tags never meet the
// messages of the collectives.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace frugal {

// True when the environment says an MPI launcher started this process with more than one rank
// (Open MPI's OMPI_COMM_WORLD_SIZE, PMI/PMIx's PMI_SIZE, Slurm's SLURM_NTASKS under srun).
bool launched_with_several_ranks();

// Initialises MPI once for this process (thread level FUNNELED: only the main thread calls MPI)
// and registers MPI_Finalize at exit. Safe to call more than once. Throws frugal::Error when MPI
// cannot start.
void mpi_init(int* argc, char*** argv);
// True between mpi_init and process exit.
bool mpi_initialized();
// Finalizes MPI now (normally left to exit); later calls do nothing.
void mpi_finalize();

// A communicator over all ranks of the job (MPI_COMM_WORLD). Needs mpi_init.
std::unique_ptr<Communicator> mpi_world_communicator();

// Bytes per peer of one staged piece of a reduction (the staging buffer holds size() of them).
inline constexpr int64_t kReducePieceBytes = int64_t{1} << 20;

}  // namespace frugal
