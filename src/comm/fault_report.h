// Telling the launcher whom a failure is about.
//
// When a rank raises PeerError or TimeoutError it is a consequence of another
// rank: the one that died, left or went silent. A launcher cannot tell that
// from exit statuses alone (the survivor may even exit first, or abort), so
// `dagr launch` gives each worker the write end of a pipe, named by
// DAGR_FAULT_FD, and the rank writes one line there before it throws:
//
//   dagr-fault <kind> <reporter pid> <blamed pid>\n      kind: dead | left | silent
//   dagr-fault silent <reporter pid> rank=<r>\n          a rank of the launched world that never joined
//
// and, not a fault, one line when a rank has joined the launched world (the
// launcher starts its spares once the whole group is up: standby.h):
//
//   dagr-joined <pid>\n
//
// One write of under PIPE_BUF bytes, so lines from many ranks never interleave.
// Without the variable (no launcher, mpirun) this does nothing.
#pragma once

namespace dagr::detail {

enum class FaultKind { dead, left, silent };

// Best effort and signal-safe enough for an error path: never throws.
void report_fault(FaultKind kind, int blamed_pid);
// A rank of the world `dagr launch` started (its RANK) that never joined.
void report_absent(int world_rank);
// This process has joined the world `dagr launch` started.
void report_joined();

}  // namespace dagr::detail
