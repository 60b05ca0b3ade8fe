// dagr over MPI, for a program that already has an MPI communicator.
//
// Communicator::from_env() chooses MPI by itself under mpirun/srun (or with
// DAGR_BACKEND=mpi|hier); this header is only for wrapping a communicator the
// caller made. MPI must then be initialised with MPI_THREAD_SERIALIZED or
// above: dagr makes its MPI calls from its own progress thread.
#pragma once

#include <mpi.h>

#include "dagr/comm/communicator.h"

namespace dagr {

// A dagr communicator over a duplicate of `comm`.
Communicator wrap_mpi(MPI_Comm comm, std::chrono::milliseconds timeout = std::chrono::minutes(5));

}  // namespace dagr
