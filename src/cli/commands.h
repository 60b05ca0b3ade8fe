// The dagr command's subcommands. Each registers itself on the root app and
// returns the function that runs it; main() turns errors into one line.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace dagr::cli {

struct Command {
  CLI::App* app;
  std::function<int()> run;  // the exit status
};

Command add_launch(CLI::App& root);
Command add_bench(CLI::App& root, const std::vector<std::string>& argv);
Command add_train(CLI::App& root, const std::vector<std::string>& argv);
Command add_infer(CLI::App& root, const std::vector<std::string>& argv);

}  // namespace dagr::cli
