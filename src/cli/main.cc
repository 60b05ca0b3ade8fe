// dagr: the command line. Each subcommand lives in its own file (commands.h).
#include <fmt/format.h>
#include <torch/version.h>

#include <cstdio>
#include <vector>

#include "blas_core.h"
#include "commands.h"
#include "comm/log.h"
#include "dagr/comm/communicator.h"
#include "dagr/error.h"

int main(int argc, char** argv) {
  dagr::cli::use_blas_kernels_for_this_cpu(argv);
  CLI::App app{"dagr: distributed training and serving of libtorch models"};
  app.require_subcommand(1);
  const std::string blas = dagr::cli::blas_kernels();
  app.set_version_flag("--version", fmt::format("dagr {} (libtorch {}, MPI backends {}{})", dagr::log::version(),
                                                TORCH_VERSION, dagr::Communicator::mpi_available() ? "built" : "not built",
                                                blas.empty() ? "" : ", " + blas));
  app.option_defaults()->always_capture_default();  // --help shows each option's default (subcommands inherit it)
  const std::vector<std::string> args(argv, argv + argc);
  std::vector<dagr::cli::Command> commands{dagr::cli::add_launch(app), dagr::cli::add_bench(app, args),
                                            dagr::cli::add_train(app, args),
                                            dagr::cli::add_infer(app, args)};
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    // A flag CLI11 refuses (unknown, out of range, missing): one line and exit
    // 2, as every other bad input (CLI11's own exit would be 105-ish, two lines).
    std::fprintf(stderr, "dagr: %s (see --help)\n", e.what());
    return 2;
  }
  for (auto& c : commands) {
    if (!c.app->parsed()) continue;
    try {
      dagr::log::configure_from_env();  // a bad DAGR_LOG_LEVEL: one line before anything starts
      return c.run();
    } catch (const dagr::InputError& e) {
      std::fprintf(stderr, "dagr %s: %s\n", c.app->get_name().c_str(), e.what());
      return 2;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "dagr %s: %s\n", c.app->get_name().c_str(), e.what());
      return 1;
    }
  }
  return 1;
}
