// Line charts as PNG files, drawn by gnuplot (Debian's gnuplot-nox: headless,
// cairo for the PNG). dagr writes the data and a script, runs gnuplot on it
// and checks that the PNG came out; see docs/DECISIONS.md for why gnuplot.
#pragma once

#include <string>
#include <vector>

namespace dagr::cli {

struct Series {
  std::string label;
  std::vector<double> x = {}, y = {};
  bool points = true;  // points on the line (off for many thin lines, e.g. one per rank)
};

struct Chart {
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;  // log_x: x is a size in bytes, on a log-2 axis
  double x_tic = 0;  // distance between x tics (0: gnuplot's choice)
  std::vector<Series> series = {};
};

// Draws the charts side by side into one PNG of width × height pixels.
// Error (gnuplot missing, failing, or taking more than 60 s) names the file
// and what to install.
void write_png(const std::string& path, const std::vector<Chart>& charts, int width, int height);

}  // namespace dagr::cli
