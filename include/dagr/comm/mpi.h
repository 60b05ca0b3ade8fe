// dagr over MPI, for a program that already has an MPI communicator.
//
// Communicator::from_env() chooses MPI by itself under mpirun/srun (or with
// DAGR_BACKEND=mpi|hier); this header is only for wrapping a communicator the
// caller made. MPI must then be initialised with MPI_THREAD_SERIALIZED or
// above: dagr calls MPI from more than one thread — the thread of a blocking
// call and the background threads of async calls — one at a time, under one
// process-wide lock, and only non-blocking operations, each polled with
// MPI_Test until it completes or its timeout runs out. A program that calls
// MPI itself as well must keep its calls off the threads that use dagr at
// that moment, or initialise MPI_THREAD_MULTIPLE.
//
// After a TimeoutError or an MPI error, dagr makes no further MPI call (the
// abandoned operation cannot be cancelled and would still write into its
// buffers); every later call on any dagr MPI communicator raises Error. Such a
// program should end with MPI_Abort rather than MPI_Finalize, which would wait
// for the silent peer. (When dagr initialised MPI itself, it skips
// MPI_Finalize at exit after a failure.)
#pragma once

#include <mpi.h>

#include "dagr/comm/communicator.h"

namespace dagr {

// A dagr communicator over a duplicate of `comm` (collective over `comm`;
// TimeoutError if the other ranks do not join within `timeout`).
Communicator wrap_mpi(MPI_Comm comm, std::chrono::milliseconds timeout = std::chrono::minutes(5));

}  // namespace dagr
