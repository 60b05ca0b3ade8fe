// Standby workers: a restart that does not wait for start-up.
//
// A worker's start-up (loading libtorch, reading the data set) takes seconds,
// most of a restart's time. With LaunchOptions::standby the launcher starts a
// spare group ahead, while the job runs: each spare does the start-up work
// that does not depend on its rank and then waits here. When the group fails,
// the spares get the failed group's ranks and go on at once.
//
// A program launched with standby calls wait_until_started() once, after that
// work and before it reads its rank (Communicator::from_env). A program that
// does not call it must not be launched with standby: its spares would run
// without a rank.
#pragma once

namespace dagr {

// In a standby worker (the launcher set DAGR_STANDBY_FD): blocks until the
// launcher gives this process a place in the group, puts its rank and restart
// count into the environment (RANK, LOCAL_RANK, DAGR_RESTART_COUNT,
// TORCHELASTIC_RESTART_COUNT) and returns true; returns false when the job
// ended without needing it (the program should then exit 0 and print
// nothing). The wait ends with the launcher: it dies with it. Anywhere else
// returns true at once.
bool wait_until_started();

}  // namespace dagr
