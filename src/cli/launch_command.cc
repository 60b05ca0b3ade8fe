#include <cstdio>

#include "commands.h"
#include "dagr/launch/launcher.h"

namespace dagr::cli {

Command add_launch(CLI::App& root) {
  auto* app = root.add_subcommand("launch", "Start N workers of a program on this machine");
  auto options = std::make_shared<LaunchOptions>();
  auto timeout_s = std::make_shared<int>(0);
  app->add_option("-n,--workers", options->workers, "Number of worker processes")->required()->default_str("")
      ->check(CLI::Range(1, 256));
  app->add_option("--timeout", *timeout_s, "Seconds a collective may wait for a peer before failing")
      ->check(CLI::Range(1, 7 * 86400))
      ->default_str("300");
  app->add_option("--job-id", options->job_id, "Name of the job's shared memory (default: random)");
  app->add_flag("!--no-tag", options->tag_output, "Do not prefix output lines with the rank");
  app->add_option("--max-restarts", options->max_restarts,
                  "When a worker fails, stop the others and start the whole group again, at most this often "
                  "(workers see DAGR_RESTART_COUNT)")
      ->check(CLI::Range(0, 1000));
  app->add_flag("--standby", options->standby,
                "With --max-restarts: keep spare workers started ahead, so that a restart need not wait for "
                "start-up (only for programs that call dagr::wait_until_started())");
  app->add_flag("--elastic", options->elastic,
                "A failed worker does not stop the others: they carry on without it (the program shrinks its "
                "group); a worker the others report silent is killed");
  app->add_option("--min-workers", options->min_workers,
                  "Elastic: with fewer workers left than this, stop the group (and restart it if allowed)")
      ->check(CLI::Range(1, 256));
  app->add_option("--cores-per-worker", options->cores_per_worker,
                  "Bind each worker to this many CPUs of its own (rank r from the (r·K)-th on), as mpirun's "
                  "--bind-to core; nothing is bound where there are fewer than workers × K CPUs (0: unbound)")
      ->check(CLI::Range(0, 4096));
  app->add_option("command", options->command, "PROGRAM ARGS... (after --)")->required()->default_str("");
  return {app, [options, timeout_s] {
            if (*timeout_s > 0) options->comm_timeout = std::chrono::seconds(*timeout_s);
            options->on_lost = [](const std::string& what) { std::fprintf(stderr, "dagr launch: %s\n", what.c_str()); };
            options->on_restart = [](const RestartEvent& e) {
              std::fprintf(stderr, "dagr launch: %s\n", describe(e).c_str());
            };
            const LaunchResult result = launch(*options);
            if (!result.failure.empty())
              std::fprintf(stderr, "dagr launch: %s; stopped all workers\n", result.failure.c_str());
            return result.exit_code;
          }};
}

}  // namespace dagr::cli
