// The launcher's loop: one poll() over every worker's stdout and stderr pipe
// and a self-pipe that the signal handlers write to (SIGCHLD, SIGINT, SIGTERM).
//
//   start     fork each worker into its own process group, with its rank in the
//             environment; it dies with the launcher (PR_SET_PDEATHSIG)
//   relay     complete lines go to our stdout/stderr, prefixed "[rank] "
//   reap      on SIGCHLD, waitpid; the first failure is remembered and the
//             others get SIGTERM, then SIGKILL after the grace period
//   forward   SIGINT/SIGTERM go to every worker; a second one, or the grace
//             period running out, is SIGKILL
//   clean     once all have exited and the pipes are drained, remove the
//             job's shared memory left in /dev/shm
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fmt/format.h>

#include "dagr/error.h"
#include "dagr/launch/launcher.h"

namespace dagr {
namespace {

int signal_pipe[2] = {-1, -1};

void on_signal(int sig) {
  const int saved = errno;
  const unsigned char byte = static_cast<unsigned char>(sig);
  [[maybe_unused]] auto n = write(signal_pipe[1], &byte, 1);
  errno = saved;
}

struct Stream {
  int fd = -1;
  std::string pending;  // bytes after the last newline
  FILE* to = nullptr;
};

struct Worker {
  pid_t pid = -1;
  bool running = false;
  Stream out, err;
};

using Clock = std::chrono::steady_clock;

void set_cloexec_nonblock(int fd) {
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

[[noreturn]] void exec_worker(const LaunchOptions& o, const std::string& job, int rank, int out_fd,
                              int err_fd) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  setpgid(0, 0);
  if (out_fd >= 0) dup2(out_fd, STDOUT_FILENO);
  if (err_fd >= 0) dup2(err_fd, STDERR_FILENO);
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGCHLD, SIG_DFL);
  signal(SIGPIPE, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  const std::string n = std::to_string(o.workers), r = std::to_string(rank);
  setenv("RANK", r.c_str(), 1);
  setenv("LOCAL_RANK", r.c_str(), 1);
  setenv("WORLD_SIZE", n.c_str(), 1);
  setenv("LOCAL_WORLD_SIZE", n.c_str(), 1);
  setenv("GROUP_RANK", "0", 1);
  setenv("DAGR_JOB_ID", job.c_str(), 1);
  if (o.comm_timeout) setenv("DAGR_TIMEOUT_S", std::to_string(o.comm_timeout->count()).c_str(), 1);
  std::vector<char*> argv;
  for (const auto& a : o.command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  std::fprintf(stderr, "dagr launch: cannot run %s: %s\n", argv[0], std::strerror(errno));
  _exit(127);
}

// Writes the complete lines in `s.pending` (all of it at EOF), each prefixed.
void relay(Stream& s, const std::string& prefix, bool at_eof) {
  std::size_t start = 0;
  for (std::size_t nl; (nl = s.pending.find('\n', start)) != std::string::npos; start = nl + 1)
    fmt::print(s.to, "{}{}", prefix, std::string_view(s.pending).substr(start, nl + 1 - start));
  s.pending.erase(0, start);
  if (at_eof && !s.pending.empty()) {
    fmt::print(s.to, "{}{}\n", prefix, s.pending);
    s.pending.clear();
  }
  std::fflush(s.to);
}

void read_stream(Stream& s, const std::string& prefix) {
  char buf[65536];
  for (;;) {
    const ssize_t n = read(s.fd, buf, sizeof buf);
    if (n > 0) {
      s.pending.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n == 0) {  // EOF
      relay(s, prefix, true);
      close(s.fd);
      s.fd = -1;
      return;
    }
    if (errno == EINTR) continue;
    relay(s, prefix, false);
    return;  // EAGAIN: nothing more for now
  }
}

std::string describe_exit(int rank, int status) {
  if (WIFSIGNALED(status))
    return fmt::format("rank {} was killed by signal {} ({})", rank, WTERMSIG(status),
                       strsignal(WTERMSIG(status)));
  return fmt::format("rank {} exited with status {}", rank, WEXITSTATUS(status));
}

}  // namespace

LaunchResult launch(const LaunchOptions& o) {
  DAGR_ENFORCE(o.workers >= 1 && o.workers <= 256, InputError, "the number of workers must be in [1, 256], not ", o.workers);
  DAGR_ENFORCE(!o.command.empty(), InputError, "no program to launch (dagr launch -n N -- PROGRAM ARGS...)");
  const std::string job = o.job_id.empty() ? fresh_job_id() : o.job_id;

  if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) detail::throw_errno("pipe");
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  struct sigaction old_int {}, old_term {}, old_chld {};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  sigaction(SIGCHLD, &sa, &old_chld);

  std::vector<Worker> workers(static_cast<std::size_t>(o.workers));
  for (int r = 0; r < o.workers; ++r) {
    Worker& w = workers[static_cast<std::size_t>(r)];
    int out[2] = {-1, -1}, err[2] = {-1, -1};
    if (o.tag_output && (pipe(out) != 0 || pipe(err) != 0)) detail::throw_errno("pipe");
    w.pid = fork();
    if (w.pid < 0) detail::throw_errno("fork");
    if (w.pid == 0) exec_worker(o, job, r, out[1], err[1]);
    setpgid(w.pid, w.pid);  // also here, so a signal sent right away reaches the group
    w.running = true;
    if (o.tag_output) {
      close(out[1]);
      close(err[1]);
      w.out = {out[0], {}, stdout};
      w.err = {err[0], {}, stderr};
      set_cloexec_nonblock(out[0]);
      set_cloexec_nonblock(err[0]);
    }
  }

  LaunchResult result;
  int running = o.workers;
  constexpr Clock::time_point kNever = Clock::time_point::max();
  Clock::time_point kill_at = kNever;  // SIGKILL whoever is left at this time
  auto stop_all = [&](int sig) {
    for (Worker& w : workers)
      if (w.running) kill(-w.pid, sig);
    if (sig != SIGKILL && kill_at == kNever) kill_at = Clock::now() + o.grace;
  };
  auto open_streams = [&] {
    for (Worker& w : workers)
      if (w.out.fd >= 0 || w.err.fd >= 0) return true;
    return false;
  };

  while (running > 0 || open_streams()) {
    std::vector<pollfd> fds{{signal_pipe[0], POLLIN, 0}};
    std::vector<std::pair<int, Stream*>> streams;
    for (std::size_t r = 0; r < workers.size(); ++r)
      for (Stream* s : {&workers[r].out, &workers[r].err})
        if (s->fd >= 0) {
          fds.push_back({s->fd, POLLIN, 0});
          streams.emplace_back(static_cast<int>(r), s);
        }
    poll(fds.data(), fds.size(), 100);

    for (std::size_t i = 1; i < fds.size(); ++i)
      if (fds[i].revents) read_stream(*streams[i - 1].second, fmt::format("[{}] ", streams[i - 1].first));

    unsigned char sig;
    while (read(signal_pipe[0], &sig, 1) == 1) {
      if (sig == SIGCHLD) continue;  // reaped below
      if (result.failure.empty()) {
        result.failure = fmt::format("interrupted by signal {} ({})", sig, strsignal(sig));
        result.exit_code = 128 + sig;
        stop_all(sig);
      } else {
        stop_all(SIGKILL);  // asked twice: no more grace
      }
    }
    for (int status; running > 0;) {
      const pid_t pid = waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      for (std::size_t r = 0; r < workers.size(); ++r) {
        if (workers[r].pid != pid || !workers[r].running) continue;
        workers[r].running = false;
        --running;
        const bool failed = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
        if (failed && result.failure.empty()) {
          result.failure = describe_exit(static_cast<int>(r), status);
          result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
          stop_all(SIGTERM);
        }
      }
    }
    if (Clock::now() >= kill_at) {
      stop_all(SIGKILL);
      kill_at = kNever;
    }
  }

  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  sigaction(SIGCHLD, &old_chld, nullptr);
  close(signal_pipe[0]);
  close(signal_pipe[1]);
  remove_job_shared_memory(job);
  return result;
}

}  // namespace dagr
