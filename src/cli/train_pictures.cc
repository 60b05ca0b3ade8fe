#include "train_pictures.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dagr/error.h"
#include "plot.h"
#include "tensorboard.h"

namespace dagr::cli {

std::vector<EpochMetrics> read_metrics(const std::string& path) {
  std::ifstream f(path);
  DAGR_ENFORCE(f, InputError, "cannot read ", path);
  std::vector<EpochMetrics> out;
  std::string line;
  for (int n = 1; std::getline(f, line); ++n) {
    try {
      const auto j = nlohmann::json::parse(line);
      if (!j.contains("epoch") || j.contains("step")) continue;  // the summary line, or an --eval-every one
      EpochMetrics m;
      m.epoch = j.at("epoch");
      m.seconds = j.at("seconds");
      m.train_loss = j.at("train_loss");
      m.train_accuracy = j.at("train_accuracy");
      m.test_accuracy = j.at("test_accuracy");
      if (j.contains("rank_train_loss")) m.rank_loss = j.at("rank_train_loss").get<std::vector<double>>();
      out.push_back(std::move(m));
    } catch (const nlohmann::json::exception& e) {
      throw InputError(fmt::format("{}:{}: not a metrics line: {}", path, n, e.what()));
    }
  }
  return out;
}

void draw_training_curves(const std::vector<EpochMetrics>& epochs, const std::string& png) {
  Chart loss{.title = "Training loss", .x_label = "epoch", .y_label = "cross-entropy"};
  Chart accuracy{.title = "Accuracy", .x_label = "epoch", .y_label = "fraction correct"};
  Series global{.label = "train (all ranks)"}, train{.label = "train"}, test{.label = "test"};
  std::vector<Series> ranks;
  // Whole epochs on the x axis, at most about ten tics.
  loss.x_tic = accuracy.x_tic = std::max<double>(1, std::ceil(static_cast<double>(epochs.size()) / 10));
  for (const EpochMetrics& m : epochs) {
    const double e = static_cast<double>(m.epoch);
    global.x.push_back(e);
    global.y.push_back(m.train_loss);
    train.x.push_back(e);
    train.y.push_back(m.train_accuracy);
    test.x.push_back(e);
    test.y.push_back(m.test_accuracy);
    for (std::size_t r = 0; r < m.rank_loss.size(); ++r) {
      if (ranks.size() <= r) ranks.push_back({.label = fmt::format("rank {}", r), .points = false});
      ranks[r].x.push_back(e);
      ranks[r].y.push_back(m.rank_loss[r]);
    }
  }
  for (Series& s : ranks) loss.series.push_back(std::move(s));
  loss.series.push_back(std::move(global));  // last: drawn over the ranks' lines
  accuracy.series = {std::move(train), std::move(test)};
  write_png(png, {loss, accuracy}, 1200, 500);
}

std::string write_training_events(const std::vector<EpochMetrics>& epochs, const std::string& dir) {
  EventWriter w(dir);
  // metrics.jsonl counts seconds from the start of training; the run ended about now.
  const double end = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const double start = end - (epochs.empty() ? 0 : epochs.back().seconds);
  for (const EpochMetrics& m : epochs) {
    const double t = start + m.seconds;
    w.scalar("train/loss", m.epoch, t, static_cast<float>(m.train_loss));
    w.scalar("train/accuracy", m.epoch, t, static_cast<float>(m.train_accuracy));
    w.scalar("test/accuracy", m.epoch, t, static_cast<float>(m.test_accuracy));
    for (std::size_t r = 0; r < m.rank_loss.size(); ++r)
      w.scalar(fmt::format("rank{}/loss", r), m.epoch, t, static_cast<float>(m.rank_loss[r]));
  }
  return w.path();
}

void check_tensorboard_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  DAGR_ENFORCE(!ec && std::filesystem::is_directory(dir), InputError, "--tensorboard ", dir,
               ": cannot create the folder", ec ? ": " + ec.message() : std::string());
}

void write_training_pictures(const std::string& out, const std::string& tensorboard) {
  const auto epochs = read_metrics(out + "/metrics.jsonl");
  try {
    draw_training_curves(epochs, out + "/curves.png");
    std::printf("Curves in %s/curves.png\n", out.c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "dagr train: warning: %s\n", e.what());
  }
  if (!tensorboard.empty())
    std::printf("TensorBoard events in %s\n", write_training_events(epochs, tensorboard).c_str());
  std::fflush(stdout);
}

}  // namespace dagr::cli
