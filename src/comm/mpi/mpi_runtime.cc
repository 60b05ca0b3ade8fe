#include "mpi/mpi_runtime.h"

#include <sched.h>

#include <map>
#include <vector>

#include "dagr/error.h"
#include "reduce_kernels.h"

namespace dagr::detail {

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw Error(concat(what, ": ", std::string(text, static_cast<std::size_t>(len))));
}

struct MpiRuntime::Task {
  std::function<bool()> step;
  bool done = false;
  std::exception_ptr error;
};

std::shared_ptr<MpiRuntime> MpiRuntime::get() {
  static std::shared_ptr<MpiRuntime> runtime(new MpiRuntime());
  return runtime;
}

MpiRuntime::MpiRuntime() {
  int initialised = 0, provided = 0;
  MPI_Initialized(&initialised);
  if (!initialised) {
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
    initialised_here_ = true;
  } else {
    MPI_Query_thread(&provided);
  }
  DAGR_ENFORCE(provided >= MPI_THREAD_SERIALIZED, Error, "MPI provides thread level ", provided,
               ", below MPI_THREAD_SERIALIZED: dagr calls MPI from more than one thread (one at a time)");
}

MpiRuntime::~MpiRuntime() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  // After a failure MPI_Finalize could wait for the silent peer forever (it
  // synchronises with every rank): the process ends without it instead.
  if (initialised_here_ && !finalized && failure_.empty()) MPI_Finalize();
}

void MpiRuntime::throw_if_failed_locked() const {
  if (!failure_.empty()) throw Error(concat("MPI is unusable after an earlier failure in this process: ", failure_));
}

void MpiRuntime::fail_locked(const std::string& failure) {
  if (failure_.empty()) failure_ = failure;
}

void MpiRuntime::poll_locked() {
  for (std::size_t i = 0; i < in_flight_.size();) {
    Task& t = *in_flight_[i];
    try {
      t.done = t.step();
    } catch (const std::exception& e) {
      t.done = true;
      t.error = std::current_exception();
      fail_locked(e.what());
    }
    if (t.done) in_flight_.erase(in_flight_.begin() + static_cast<long>(i));
    else ++i;
    if (!failure_.empty()) return;  // no MPI call after a failure
  }
}

void MpiRuntime::run(std::function<bool()> step, Clock::time_point deadline,
                     const std::function<std::string()>& what) {
  auto task = std::make_shared<Task>();
  task->step = std::move(step);
  {
    std::lock_guard lock(mpi_mutex_);
    throw_if_failed_locked();
    in_flight_.push_back(task);
  }
  // The lock is held for one round of MPI_Test calls at a time, never across a
  // wait; the deadline is checked under it, so no thread calls MPI after the
  // round that failed the runtime.
  for (int polls = 0;; ++polls) {
    {
      std::lock_guard lock(mpi_mutex_);
      if (task->done) break;  // another thread's round finished it (or failed it: rethrown below)
      throw_if_failed_locked();
      poll_locked();
      if (task->done) break;
      if ((polls & 63) == 63 && Clock::now() >= deadline) {
        std::string message = concat("timed out waiting for MPI to complete ", what());
        fail_locked(message);
        throw TimeoutError(message);
      }
    }
    if (polls > 1000) sched_yield();  // a long operation: let the other ranks on this core run
  }
  if (task->error) std::rethrow_exception(task->error);
}

void MpiRuntime::call(const std::function<void()>& fn) {
  std::lock_guard lock(mpi_mutex_);
  throw_if_failed_locked();
  try {
    fn();
  } catch (const std::exception& e) {
    fail_locked(e.what());
    throw;
  }
}

namespace {
// MPI user functions for the 16-bit floats: inout = in op inout, via dagr's kernels.
template <DType D, ReduceOp O>
void combine(void* in, void* inout, int* len, MPI_Datatype*) {
  const void* sources[2] = {in, inout};
  reduce_sources({inout}, sources, 2, static_cast<std::size_t>(*len), D, O);
}
template <DType D>
MPI_User_function* function_for(ReduceOp op) {
  switch (op) {
    case ReduceOp::min: return combine<D, ReduceOp::min>;
    case ReduceOp::max: return combine<D, ReduceOp::max>;
    case ReduceOp::prod: return combine<D, ReduceOp::prod>;
    default: return combine<D, ReduceOp::sum>;  // avg is a sum, divided afterwards
  }
}
}  // namespace

MPI_Op MpiRuntime::user_op(DType dtype, ReduceOp op) {
  static std::map<std::pair<DType, ReduceOp>, MPI_Op> ops;
  auto [it, fresh] = ops.try_emplace({dtype, op}, MPI_OP_NULL);
  if (fresh) {
    MPI_User_function* fn = dtype == DType::float16 ? function_for<DType::float16>(op) : function_for<DType::bfloat16>(op);
    check_mpi(MPI_Op_create(fn, 1, &it->second), "MPI_Op_create");
  }
  return it->second;
}

}  // namespace dagr::detail
