#include "dagr/comm/mpi.h"

#include "mpi/mpi_backend.h"

namespace dagr {

Communicator wrap_mpi(MPI_Comm comm, std::chrono::milliseconds timeout) {
  return detail::make_communicator(
      std::make_unique<detail::MpiBackend>(detail::MpiRuntime::get(), comm, detail::Clock::now() + timeout), timeout);
}

}  // namespace dagr
