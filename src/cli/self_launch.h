// Commands that start their own workers (`dagr bench -n 4`, `dagr train --workers 4`)
// re-run this same command line as N workers under the launcher — unless a
// launcher already made this process one rank of a job.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "dagr/launch/launcher.h"

namespace dagr::cli {

// The launcher whose environment says this process is one rank of a job, or
// "" when none does: "dagr launch" (WORLD_SIZE, as torchrun sets it too),
// "Open MPI" (OMPI_COMM_WORLD_SIZE), "PMI" (PMI_SIZE or PMI_RANK: MPICH's
// Hydra, srun --mpi=pmi2), "PMIx" (PMIX_RANK), "Slurm" (SLURM_PROCID with
// SLURM_STEP_ID: a task of srun; salloc and sbatch shells set SLURM_PROCID
// but no step).
std::string job_launcher();

// When this process is not already a rank of a job and `workers` > 1: runs
// `argv` as that many workers and returns the job's exit status. Otherwise
// nullopt: the caller is a worker and goes on. InputError when srun started
// several tasks without a process-management interface (no PMI or PMIx
// variables): each would train alone.
// `recovery` carries what the command asks of the launcher when a worker
// fails (max_restarts, elastic, min_workers); the rest is filled in here.
std::optional<int> run_as_workers(int workers, const std::vector<std::string>& argv,
                                  const LaunchOptions& recovery = {});

}  // namespace dagr::cli
