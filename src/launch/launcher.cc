// The launcher: start the group, watch it, name the cause of a failure, and
// start the group again while restarts are left.
//
// One attempt is one poll() loop over every worker's output, the fault pipe
// (fault_report.h in comm) and a self-pipe that the signal handlers write to
// (SIGCHLD, SIGINT, SIGTERM):
//
//   start     fork each worker into its own process group, with its rank in the
//             environment and the job's secret on a pipe of its own
//             (DAGR_SECRET_FD, job_secret.h in comm); it dies with the
//             launcher (PR_SET_PDEATHSIG). Its
//             stdout is a pseudo-terminal, so a program's stdio flushes every
//             line as it would on a terminal (as under mpirun); stderr is a pipe.
//             With standby (standby.h), a restart takes the spares started
//             during the last attempt instead (their rank goes down their
//             standby pipe), and a new set of spares is started for the next
//             restart, once every worker has joined, while restarts are left.
//             With cores_per_worker, a worker is bound to its rank's CPUs
//             before it runs, a spare when it is given its place
//             (cpu_binding.h)
//   relay     lines go to our stdout/stderr, prefixed "[rank] " (output_relay.h)
//   reap      on SIGCHLD, waitpid; after the first failure the others have
//             `settle` to fail on their own and say why, then get SIGTERM (and
//             SIGCONT, for a stopped one), then SIGKILL after `grace`. In
//             elastic mode, once every worker has joined, a failure is only
//             reported when fewer than min_workers others still run or have
//             finished well, and a worker reported silent is killed
//   forward   SIGINT/SIGTERM go to every worker; a second one, or the grace
//             period running out, is SIGKILL
//   clean     once all have exited and the output is drained, name the cause
//             (failure_cause.h) and remove the job's shared memory in /dev/shm;
//             at the end of the job, spares are killed (they hold nothing yet)
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <optional>
#include <set>

#include "dagr/error.h"
#include "comm/env_timeout.h"
#include "comm/log.h"
#include "dagr/launch/launcher.h"
#include "launch/cpu_binding.h"
#include "launch/failure_cause.h"
#include "launch/output_relay.h"
#include "launch/process_threads.h"

namespace dagr {
namespace {

using launch_detail::Clock;
using launch_detail::FaultReport;
using launch_detail::OutputStream;
using launch_detail::Sink;
using launch_detail::WorkerExit;

int signal_pipe[2] = {-1, -1};

void on_signal(int sig) {
  const int saved = errno;
  const unsigned char byte = static_cast<unsigned char>(sig);
  [[maybe_unused]] auto n = write(signal_pipe[1], &byte, 1);
  errno = saved;
}

void set_cloexec_nonblock(int fd) {
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

struct Worker {
  pid_t pid = -1;
  bool running = false;
  bool killed_silent = false;  // elastic: killed because the others reported it silent
  int standby_fd = -1;         // a spare's standby pipe (write end): its assignment goes there
  std::optional<OutputStream> out, err;
};

// What every worker of the job shares.
struct Spawn {
  const LaunchOptions& options;
  const std::string& job;
  const std::string& secret;  // admits the job's workers (and spares) to its groups
  int fault_fd;  // write end of the fault pipe
  bool renice_spares;
  std::vector<cpu_set_t> cpus;  // by rank, with cores_per_worker (cpu_binding.h); empty: unbound
  int job_cpus;                 // the CPUs the launcher may use: DAGR_JOB_CPUS
};

// The variables that a spare learns only when it is given its place.
std::vector<std::pair<std::string, std::string>> assignment(int rank, int restart) {
  const std::string r = std::to_string(rank), k = std::to_string(restart);
  return {{"RANK", r}, {"LOCAL_RANK", r}, {"DAGR_RESTART_COUNT", k}, {"TORCHELASTIC_RESTART_COUNT", k}};
}

// Spares start up at the lowest priority (nice 19), so that on a machine
// without idle cores they take only what the running group leaves; given their
// place, every thread of theirs gets the launcher's priority back. Only when
// the launcher may raise it again (root, or RLIMIT_NICE allows): otherwise a
// restarted group would stay at nice 19, and spares start at the launcher's.
constexpr int kSpareNice = 19;

bool may_renice_spares() {
  errno = 0;
  const int own = getpriority(PRIO_PROCESS, 0);
  if (errno != 0) return false;
  if (geteuid() == 0) return true;
  rlimit limit{};
  return getrlimit(RLIMIT_NICE, &limit) == 0 && (limit.rlim_cur == RLIM_INFINITY || 20 - static_cast<long>(limit.rlim_cur) <= own);
}

void restore_priority(pid_t pid) {
  const int own = getpriority(PRIO_PROCESS, 0);
  launch_detail::for_each_thread(pid, [own](pid_t tid) {
    errno = 0;
    const int now = getpriority(PRIO_PROCESS, static_cast<id_t>(tid));
    if (errno == 0 && now == own) return false;
    setpriority(PRIO_PROCESS, static_cast<id_t>(tid), own);
    return true;
  });
}

// rank < 0: a spare, which reads its rank from `standby_fd` (standby.h).
[[noreturn]] void exec_worker(const Spawn& s, int rank, int restart, int standby_fd, int secret_fd, int out_fd,
                              int err_fd) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  setpgid(0, 0);
  if (rank < 0 && s.renice_spares) setpriority(PRIO_PROCESS, 0, kSpareNice);
  if (rank >= 0 && !s.cpus.empty()) sched_setaffinity(0, sizeof(cpu_set_t), &s.cpus[static_cast<std::size_t>(rank)]);
  if (out_fd >= 0) dup2(out_fd, STDOUT_FILENO);
  if (err_fd >= 0) dup2(err_fd, STDERR_FILENO);
  fcntl(s.fault_fd, F_SETFD, 0);  // the descriptors the worker inherits on purpose
  if (standby_fd >= 0) fcntl(standby_fd, F_SETFD, 0);
  fcntl(secret_fd, F_SETFD, 0);
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGCHLD, SIG_DFL);
  signal(SIGPIPE, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  const LaunchOptions& o = s.options;
  const std::string n = std::to_string(o.workers);
  if (rank >= 0) {
    for (const auto& [name, value] : assignment(rank, restart)) setenv(name.c_str(), value.c_str(), 1);
  } else {
    setenv("DAGR_STANDBY_FD", std::to_string(standby_fd).c_str(), 1);
  }
  setenv("WORLD_SIZE", n.c_str(), 1);
  setenv("LOCAL_WORLD_SIZE", n.c_str(), 1);
  setenv("GROUP_RANK", "0", 1);
  setenv("DAGR_JOB_ID", s.job.c_str(), 1);
  setenv("DAGR_FAULT_FD", std::to_string(s.fault_fd).c_str(), 1);
  setenv("DAGR_SECRET_FD", std::to_string(secret_fd).c_str(), 1);
  setenv("DAGR_JOB_CPUS", std::to_string(s.job_cpus).c_str(), 1);
  if (o.comm_timeout) setenv("DAGR_TIMEOUT_S", std::to_string(o.comm_timeout->count()).c_str(), 1);
  std::vector<char*> argv;
  for (const auto& a : o.command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  std::fprintf(stderr, "dagr launch: cannot run %s: %s\n", argv[0], std::strerror(errno));
  _exit(127);
}

// A pseudo-terminal for a worker's stdout, raw (no "\n" → "\r\n", no echo).
void open_output_pty(int fds[2]) {
  if (openpty(&fds[0], &fds[1], nullptr, nullptr, nullptr) != 0) detail::throw_errno("openpty");
  termios t{};
  tcgetattr(fds[1], &t);
  cfmakeraw(&t);
  tcsetattr(fds[1], TCSANOW, &t);
}

// A pipe holding the job's secret and closed for writing: the read end, which
// the worker reads to its end once (job_secret.h). The secret fits in the pipe's
// buffer, so the write never waits.
int secret_pipe(const std::string& secret) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) detail::throw_errno("pipe");
  const std::string line = secret + "\n";
  const bool written = write(fds[1], line.data(), line.size()) == static_cast<ssize_t>(line.size());
  const int saved = errno;
  close(fds[1]);
  if (!written) {
    close(fds[0]);
    errno = saved;
    detail::throw_errno("writing the job secret to a worker's pipe");
  }
  return fds[0];
}

// Forks one worker (rank >= 0) or spare (rank < 0), with its output relayed when tagging.
Worker start_process(const Spawn& s, int rank, int restart, Sink& out_sink, Sink& err_sink) {
  const LaunchOptions& o = s.options;
  Worker w;
  int out[2] = {-1, -1}, err[2] = {-1, -1}, standby[2] = {-1, -1};
  if (o.tag_output) {
    open_output_pty(out);
    if (pipe(err) != 0) detail::throw_errno("pipe");
  }
  if (rank < 0 && pipe2(standby, O_CLOEXEC) != 0) detail::throw_errno("pipe");
  const int secret_fd = secret_pipe(s.secret);
  w.pid = fork();
  if (w.pid < 0) {
    const int saved = errno;
    close(secret_fd);
    errno = saved;
    detail::throw_errno("fork");
  }
  if (w.pid == 0) exec_worker(s, rank, restart, standby[0], secret_fd, out[1], err[1]);
  close(secret_fd);
  setpgid(w.pid, w.pid);  // also here, so a signal sent right away reaches the group
  w.running = true;
  if (rank < 0) {
    close(standby[0]);
    w.standby_fd = standby[1];
  }
  if (o.tag_output) {
    close(out[1]);
    close(err[1]);
    set_cloexec_nonblock(out[0]);
    set_cloexec_nonblock(err[0]);
    const std::string prefix = rank < 0 ? "[standby] " : fmt::format("[{}] ", rank);
    w.out.emplace(out[0], out_sink, prefix);
    w.err.emplace(err[0], err_sink, prefix);
  }
  return w;
}

// Gives a spare its place (and its rank's CPUs): the assignment down its
// standby pipe, then end of file. False (errno set) when the spare could not
// take it: it died since it was last reaped and closed its end (EPIPE, with
// SIGPIPE held back so that it does not end the launcher).
bool assign(const Spawn& s, Worker& w, int rank, int restart) {
  restore_priority(w.pid);
  if (!s.cpus.empty()) launch_detail::bind_process(w.pid, s.cpus[static_cast<std::size_t>(rank)]);
  kill(-w.pid, SIGCONT);  // a spare someone stopped would hold the new group up
  std::string message;
  for (const auto& [name, value] : assignment(rank, restart)) message += name + "=" + value + "\n";
  sigset_t pipe_signal, before;
  sigemptyset(&pipe_signal);
  sigaddset(&pipe_signal, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_signal, &before);
  const bool sent = write(w.standby_fd, message.data(), message.size()) == static_cast<ssize_t>(message.size());
  const int error = errno;
  if (!sent && error == EPIPE && !sigismember(&before, SIGPIPE)) {
    const timespec now{};
    sigtimedwait(&pipe_signal, nullptr, &now);  // the SIGPIPE the write raised, held back: taken
  }
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
  close(w.standby_fd);
  w.standby_fd = -1;
  errno = error;
  if (!sent) return false;
  for (auto* s : {&w.out, &w.err})
    if (*s) (*s)->set_prefix(fmt::format("[{}] ", rank));
  return true;
}

// What a process that exited still had in its output pipes, relayed.
void relay_rest(Worker& w) {
  for (auto* s : {&w.out, &w.err})
    for (int i = 0; i < 1000 && *s && (*s)->open(); ++i) (*s)->drain();  // it exited: the rest is there
}

// Spares that exited while they waited (reaped by run_group) are not used: their
// ranks are started afresh. What they printed is relayed first.
void drop_exited_spares(std::vector<Worker>& spares) {
  std::vector<Worker> live;
  for (Worker& w : spares) {
    if (w.running) {
      live.push_back(std::move(w));
      continue;
    }
    relay_rest(w);
    if (w.standby_fd >= 0) close(w.standby_fd);
  }
  spares = std::move(live);
}

// Kills a spare (it has not started its work: nothing is lost) and waits for it.
void retire_spare(Worker& w) {
  if (w.running) {
    kill(-w.pid, SIGKILL);
    waitpid(w.pid, nullptr, 0);
    w.running = false;
  }
  if (w.standby_fd >= 0) close(w.standby_fd);
  w.standby_fd = -1;
}

// Kills the spares left at the end of the job and waits for them.
void retire_spares(std::vector<Worker>& spares) {
  for (Worker& w : spares) retire_spare(w);
  spares.clear();
}

// Lines "dagr-fault …" and "dagr-joined <pid>" from the workers, kept whole across reads.
struct FaultPipe {
  int read_fd = -1, write_fd = -1;
  std::string pending;
  std::vector<FaultReport> reports;
  std::set<pid_t> joined;

  FaultPipe() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) detail::throw_errno("pipe");
    read_fd = fds[0];
    write_fd = fds[1];
    set_cloexec_nonblock(read_fd);
  }
  ~FaultPipe() {
    close(read_fd);
    close(write_fd);
  }
  void drain() {
    char buf[4096];
    for (ssize_t n; (n = read(read_fd, buf, sizeof buf)) > 0;) pending.append(buf, static_cast<std::size_t>(n));
    for (std::size_t nl; (nl = pending.find('\n')) != std::string::npos; pending.erase(0, nl + 1)) {
      const std::string line = pending.substr(0, nl);
      FaultReport f;
      if (launch_detail::parse_fault_report(line, f)) reports.push_back(f);
      if (line.rfind("dagr-joined ", 0) == 0) joined.insert(static_cast<pid_t>(std::atol(line.c_str() + 12)));
    }
  }
};

// Elastic mode: the survivors cannot shrink their group while a silent rank
// (stopped, or stuck) still holds its place; the launcher kills every worker
// that the others' fault reports call silent.
void kill_silent(std::vector<Worker>& workers, FaultPipe& faults) {
  for (const FaultReport& f : faults.reports)
    if (f.kind == "silent")
      for (std::size_t r = 0; r < workers.size(); ++r)
        if (workers[r].running && (workers[r].pid == f.blamed || static_cast<int>(r) == f.blamed_rank)) {
          kill(-workers[r].pid, SIGKILL);
          workers[r].killed_silent = true;
        }
}

struct Attempt {
  int exit_code = 0;
  std::string failure;
  bool interrupted = false;
  Clock::time_point failed_at, stopped_at;
  std::vector<std::string> lost;  // elastic: workers lost while the others carried on
};

// Runs the group once, to the exit of every worker. Its ranks are taken from
// `spares` while there are live ones, else started afresh; with standby, new
// spares are started for the next restart once the group has been.
Attempt run_group(const Spawn& spawn, int restart, FaultPipe& faults, std::vector<Worker>& spares, Sink& out_sink,
                  Sink& err_sink) {
  const LaunchOptions& o = spawn.options;
  const std::string& job = spawn.job;
  faults.reports.clear();  // the last attempt's workers have all exited: nothing of theirs is still to come
  std::vector<Worker> workers;
  workers.reserve(static_cast<std::size_t>(o.workers));
  std::vector<pid_t> pids;
  drop_exited_spares(spares);
  for (int r = 0; r < o.workers; ++r) {
    if (!spares.empty()) {
      Worker spare = std::move(spares.back());
      spares.pop_back();
      if (assign(spawn, spare, r, restart)) {
        workers.push_back(std::move(spare));
        DAGR_LOG_INFO("job {} attempt {}: rank {} of {} is standby pid {}", job, restart, r, o.workers,
                      workers.back().pid);
        pids.push_back(workers.back().pid);
        continue;
      }
      DAGR_LOG_WARN("job {} attempt {}: standby pid {} cannot take rank {} ({}); starting it afresh", job, restart,
                    spare.pid, r, std::strerror(errno));
      retire_spare(spare);
      relay_rest(spare);
    }
    workers.push_back(start_process(spawn, r, restart, out_sink, err_sink));
    DAGR_LOG_INFO("job {} attempt {}: rank {} of {} started as pid {}", job, restart, r, o.workers, workers.back().pid);
    pids.push_back(workers.back().pid);
  }
  faults.joined.clear();
  // Whether every worker of this attempt has said it joined the group.
  auto all_joined = [&] {
    return std::all_of(pids.begin(), pids.end(), [&](pid_t p) { return faults.joined.count(p) > 0; });
  };
  // With standby, spares for the next restart start once every worker has
  // joined, so that they do not slow the group's own start-up.
  bool want_spares = o.standby && restart < o.max_restarts;
  auto start_spares_when_joined = [&] {
    if (!want_spares || !all_joined()) return;
    want_spares = false;
    for (int r = 0; r < o.workers; ++r) {
      spares.push_back(start_process(spawn, -1, restart, out_sink, err_sink));
      DAGR_LOG_INFO("job {} attempt {}: standby pid {} started", job, restart, spares.back().pid);
    }
  };

  Attempt attempt;
  std::vector<WorkerExit> exits;
  int running = o.workers, finished = 0;  // workers still running; workers that exited with status 0
  constexpr Clock::time_point kNever = Clock::time_point::max();
  Clock::time_point term_at = kNever, kill_at = kNever;
  bool stopping = false;
  auto stop_all = [&](int sig) {
    stopping = true;
    for (Worker& w : workers)
      if (w.running) {
        kill(-w.pid, sig);
        if (sig != SIGKILL) kill(-w.pid, SIGCONT);  // a stopped worker must run to see it
      }
    if (sig != SIGKILL && kill_at == kNever) kill_at = Clock::now() + o.grace;
  };
  auto open_streams = [&] {
    for (Worker& w : workers)
      if ((w.out && w.out->open()) || (w.err && w.err->open())) return true;
    return false;
  };

  while (running > 0 || open_streams()) {
    std::vector<pollfd> fds{{signal_pipe[0], POLLIN, 0}, {faults.read_fd, POLLIN, 0}};
    std::vector<OutputStream*> streams;
    for (auto* group : {&workers, &spares})
      for (Worker& w : *group)
        for (auto* s : {&w.out, &w.err})
          if (*s && (*s)->open()) {
            fds.push_back({(*s)->fd(), POLLIN, 0});
            streams.push_back(&**s);
          }
    poll(fds.data(), fds.size(), 50);
    for (std::size_t i = 2; i < fds.size(); ++i)
      if (fds[i].revents) streams[i - 2]->drain();
    faults.drain();
    if (o.elastic) kill_silent(workers, faults);
    if (!stopping && running == o.workers) start_spares_when_joined();

    unsigned char sig;
    while (read(signal_pipe[0], &sig, 1) == 1) {
      if (sig == SIGCHLD) continue;  // reaped below
      if (!attempt.interrupted) {
        attempt.interrupted = true;
        attempt.failure = fmt::format("interrupted by signal {} ({})", sig, strsignal(sig));
        attempt.exit_code = 128 + sig;
        stop_all(sig);
      } else {
        stop_all(SIGKILL);  // asked twice: no more grace
      }
    }
    for (int status; running > 0;) {
      const pid_t pid = waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      for (Worker& w : spares)
        if (w.pid == pid && w.running) {  // not used again; a restart starts that rank afresh
          w.running = false;
          // A spare ends with the job when a terminal's or a scheduler's signal
          // reaches every process group (the launcher stops only workers'); ended
          // on its own (killed, out of memory) it is a machine problem worth a warning.
          const int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
          const std::string how = launch_detail::describe_status(status);
          if (attempt.interrupted || sig == SIGINT || sig == SIGTERM || sig == SIGHUP)
            DAGR_LOG_INFO("job {}: standby pid {} {} while it waited", job, pid, how);
          else
            DAGR_LOG_WARN("job {}: standby pid {} {} while it waited; a restart will start that rank afresh", job,
                          pid, how);
        }
      for (std::size_t r = 0; r < workers.size(); ++r) {
        if (workers[r].pid != pid || !workers[r].running) continue;
        workers[r].running = false;
        --running;
        exits.push_back({static_cast<int>(r), pid, status, Clock::now(), stopping});
        DAGR_LOG_INFO("job {} attempt {}: {} (pid {})", job, restart,
                      launch_detail::describe_exit(static_cast<int>(r), status), pid);
        if (!launch_detail::failed(status)) {
          ++finished;
          continue;
        }
        if (attempt.failed_at != Clock::time_point{}) continue;
        // Elastic: the others carry on, if enough of them still run or have
        // finished well (the order in which exits are reaped decides nothing),
        // and only once the whole group has joined: before that the survivors
        // cannot shrink a group that never formed, and wait for the lost rank
        // until they time out, so the loss fails the attempt (a restart with
        // --max-restarts) and is named as the cause.
        faults.drain();
        const int others = running + finished;
        if (o.elastic && !stopping && all_joined() && others >= o.min_workers) {
          const std::string what = workers[r].killed_silent
                                       ? fmt::format("rank {} stopped responding and was killed", r)
                                       : launch_detail::describe_exit(static_cast<int>(r), status);
          attempt.lost.push_back(fmt::format("{}; {} carry on", what,
                                             others == 1 ? "1 worker" : fmt::format("{} workers", others)));
          if (o.on_lost) o.on_lost(attempt.lost.back());
          continue;
        }
        attempt.failed_at = Clock::now();
        term_at = attempt.failed_at + o.settle;
      }
    }
    const auto now = Clock::now();
    if (!stopping && now >= term_at) stop_all(SIGTERM);
    if (now >= kill_at) {
      stop_all(SIGKILL);
      kill_at = kNever;
    }
  }
  attempt.stopped_at = Clock::now();
  faults.drain();

  if (!attempt.interrupted && attempt.failed_at != Clock::time_point{}) {
    attempt.failure = launch_detail::failure_cause(pids, exits, faults.reports);
    for (const WorkerExit& e : exits)  // the exit status of the first failure seen
      if (launch_detail::failed(e.status)) {
        attempt.exit_code = WIFEXITED(e.status) ? WEXITSTATUS(e.status) : 128 + WTERMSIG(e.status);
        break;
      }
  }
  return attempt;
}

}  // namespace

std::string describe(const RestartEvent& e) {
  return fmt::format("restart {} of {} after {}: group stopped in {:.2f} s, restarted {:.2f} s after the failure",
                     e.restart, e.max_restarts, e.failure, e.stop_time.count() / 1000.0, e.recovery.count() / 1000.0);
}

LaunchResult launch(const LaunchOptions& o) {
  DAGR_ENFORCE(o.workers >= 1 && o.workers <= 256, InputError, "the number of workers must be in [1, 256], not ", o.workers);
  DAGR_ENFORCE(!o.command.empty(), InputError, "no program to launch (dagr launch -n N -- PROGRAM ARGS...)");
  DAGR_ENFORCE(o.max_restarts >= 0, InputError, "max_restarts must be >= 0, not ", o.max_restarts);
  DAGR_ENFORCE(o.min_workers >= 1 && o.min_workers <= o.workers, InputError, "min_workers must be in [1, ",
               o.workers, "], not ", o.min_workers);
  log::configure_from_env();  // DAGR_LOG_LEVEL=info: each worker's start and exit, each restart
  if (!o.comm_timeout) detail::timeout_from_env();  // a bad DAGR_TIMEOUT_S: the job's error, before any worker
  log::set_role("launch");
  const std::string job = o.job_id.empty() ? fresh_job_id() : o.job_id;
  const std::string secret = fresh_job_secret();  // fresh for every job, even one with a given id

  if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) detail::throw_errno("pipe");
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  struct sigaction old_int {}, old_term {}, old_chld {};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  sigaction(SIGCHLD, &sa, &old_chld);

  Sink out_sink{stdout}, err_sink{stderr};
  LaunchResult result;
  FaultPipe faults;  // one for the job, so that spares started during one attempt report in the next
  const Spawn spawn{o, job, secret, faults.write_fd, may_renice_spares(),
                    launch_detail::worker_cpus(o.workers, o.cores_per_worker), launch_detail::allowed_cpus()};
  std::vector<Worker> spares;
  for (int restart = 0;; ++restart) {
    const Attempt attempt = run_group(spawn, restart, faults, spares, out_sink, err_sink);
    remove_job_shared_memory(job);
    result.exit_code = attempt.exit_code;
    result.failure = attempt.failure;
    result.restarts = restart;
    result.lost.insert(result.lost.end(), attempt.lost.begin(), attempt.lost.end());
    if (attempt.failure.empty() || attempt.interrupted || restart == o.max_restarts) break;
    DAGR_LOG_INFO("job {}: restart {} of {} after {}", job, restart + 1, o.max_restarts, attempt.failure);
    if (o.on_restart) {
      using std::chrono::duration_cast, std::chrono::milliseconds;
      o.on_restart({.restart = restart + 1,
                    .max_restarts = o.max_restarts,
                    .failure = attempt.failure,
                    .stop_time = duration_cast<milliseconds>(attempt.stopped_at - attempt.failed_at),
                    .recovery = duration_cast<milliseconds>(Clock::now() - attempt.failed_at)});
    }
  }

  retire_spares(spares);
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  sigaction(SIGCHLD, &old_chld, nullptr);
  close(signal_pipe[0]);
  close(signal_pipe[1]);
  return result;
}

}  // namespace dagr
