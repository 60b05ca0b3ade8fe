#include <cstdio>

#include "commands.h"
#include "dagr/launch/launcher.h"

namespace dagr::cli {

Command add_launch(CLI::App& root) {
  auto* app = root.add_subcommand("launch", "Start N workers of a program on this machine");
  auto options = std::make_shared<LaunchOptions>();
  auto timeout_s = std::make_shared<int>(0);
  app->add_option("-n,--workers", options->workers, "Number of worker processes")->required()
      ->check(CLI::Range(1, 256));
  app->add_option("--timeout", *timeout_s,
                  "Seconds a collective may wait for a peer before failing (default 300)")
      ->check(CLI::Range(1, 7 * 86400));
  app->add_option("--job-id", options->job_id, "Name of the job's shared memory (default: random)");
  app->add_flag("!--no-tag", options->tag_output, "Do not prefix output lines with the rank");
  app->add_option("command", options->command, "PROGRAM ARGS... (after --)")->required();
  return {app, [options, timeout_s] {
            if (*timeout_s > 0) options->comm_timeout = std::chrono::seconds(*timeout_s);
            const LaunchResult result = launch(*options);
            if (!result.failure.empty())
              std::fprintf(stderr, "dagr launch: %s; stopped all workers\n", result.failure.c_str());
            return result.exit_code;
          }};
}

}  // namespace dagr::cli
