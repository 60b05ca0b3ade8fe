#include "plot.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <thread>

#include "dagr/error.h"

extern char** environ;

namespace dagr::cli {
namespace {

// Tics for a log-2 axis of byte sizes: powers of 2 labelled as `dagr bench`
// takes them (1K = 1024), every 2^k with k a multiple of the step that keeps
// about eight of them.
std::string byte_tics(const std::vector<Series>& series) {
  double lo = 0, hi = 0;
  for (const Series& s : series)
    for (double x : s.x) {
      lo = lo == 0 ? x : std::min(lo, x);
      hi = std::max(hi, x);
    }
  if (lo <= 0) return "set xtics autofreq\n";
  const int first = static_cast<int>(std::floor(std::log2(lo))), last = static_cast<int>(std::ceil(std::log2(hi)));
  const int step = std::max(1, (last - first + 7) / 8);
  std::string tics;
  for (int k = first; k <= last; k += step) {
    const char* units[] = {"", "K", "M", "G", "T"};
    const std::string label = fmt::format("{}{}", 1ull << (k % 10), units[std::min(k / 10, 4)]);
    tics += fmt::format("{}'{}' {:.0f}", tics.empty() ? "" : ", ", label, std::ldexp(1.0, k));
  }
  return "set xtics (" + tics + ")\n";
}

// A gnuplot string literal: single quotes, which gnuplot does not interpret inside.
std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

// The script: one inline data block per series ($d<chart>_<series>), then one
// plot per chart in a multiplot row.
std::string script(const std::string& png, const std::vector<Chart>& charts, int width, int height) {
  std::string s = fmt::format("set terminal pngcairo size {},{} font 'Sans,10'\nset output {}\n", width, height,
                              quoted(png));
  for (std::size_t c = 0; c < charts.size(); ++c)
    for (std::size_t k = 0; k < charts[c].series.size(); ++k) {
      s += fmt::format("$d{}_{} << EOD\n", c, k);
      const Series& series = charts[c].series[k];
      for (std::size_t i = 0; i < series.x.size() && i < series.y.size(); ++i)
        s += fmt::format("{:.9g} {:.9g}\n", series.x[i], series.y[i]);
      s += "EOD\n";
    }
  s += fmt::format("set multiplot layout 1,{}\nset grid\nset key outside bottom center horizontal\n", charts.size());
  for (std::size_t c = 0; c < charts.size(); ++c) {
    const Chart& chart = charts[c];
    s += fmt::format("set title {}\nset xlabel {}\nset ylabel {}\n", quoted(chart.title), quoted(chart.x_label),
                     quoted(chart.y_label));
    s += chart.log_x ? "set logscale x 2\n" + byte_tics(chart.series) : "unset logscale x\n";
    s += chart.log_y ? "set logscale y\n" : "unset logscale y\n";
    if (!chart.log_x) s += chart.x_tic > 0 ? fmt::format("set xtics {}\n", chart.x_tic) : "set xtics autofreq\n";
    // One x value (a one-epoch run) or one y value (one worker's loss, also the
    // global one): a range around it, which gnuplot would otherwise widen
    // itself with a warning on the user's terminal.
    s += "set xrange [*:*]\nset yrange [*:*]\n";
    for (const char* axis : {"x", "y"}) {
      double low = INFINITY, high = -INFINITY;
      for (const Series& series : chart.series)
        for (double v : axis[0] == 'x' ? series.x : series.y) low = std::min(low, v), high = std::max(high, v);
      const double pad = axis[0] == 'x' ? 1 : std::max(std::abs(low) * 0.01, 1e-9);
      if (low == high && !(axis[0] == 'x' ? chart.log_x : chart.log_y))
        s += fmt::format("set {}range [{:.9g}:{:.9g}]\n", axis, low - pad, high + pad);
    }
    std::string plot;
    for (std::size_t k = 0; k < chart.series.size(); ++k)
      plot += fmt::format("{}$d{}_{} using 1:2 with {} lw 2 title {}", k ? ", " : "plot ", c, k,
                          chart.series[k].points ? "linespoints pt 7 ps 0.6" : "lines", quoted(chart.series[k].label));
    s += plot + "\n";
  }
  return s + "unset multiplot\n";
}

}  // namespace

void write_png(const std::string& path, const std::vector<Chart>& charts, int width, int height) {
  const std::string gp = path + ".gp";
  {
    std::ofstream f(gp, std::ios::trunc);
    f << script(path, charts, width, height);
    DAGR_ENFORCE(f.flush(), Error, "cannot write ", gp);
  }
  std::filesystem::remove(path);
  const char* argv[] = {"gnuplot", gp.c_str(), nullptr};
  pid_t pid = -1;
  if (posix_spawnp(&pid, "gnuplot", nullptr, nullptr, const_cast<char**>(argv), environ) != 0) {
    std::filesystem::remove(gp);
    throw Error(fmt::format("cannot draw {}: gnuplot is not installed (apt-get install gnuplot-nox, or "
                            "scripts/setup.sh)", path));
  }
  // gnuplot draws a few charts in well under a second; a bound all the same.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      throw Error(fmt::format("cannot draw {}: gnuplot ran for more than 60 s (script: {})", path, gp));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  DAGR_ENFORCE(WIFEXITED(status) && WEXITSTATUS(status) == 0 && std::filesystem::exists(path), Error,
               "cannot draw ", path, ": gnuplot failed on ", gp, " (its message is above)");
  std::filesystem::remove(gp);
}

}  // namespace dagr::cli
