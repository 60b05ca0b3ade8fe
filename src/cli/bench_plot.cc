#include "bench_plot.h"

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "dagr/error.h"

namespace dagr::cli {

std::vector<Series> read_peer_curves(const std::string& csv) {
  std::ifstream f(csv);
  DAGR_ENFORCE(f, InputError, "--peers: cannot read ", csv);
  std::vector<Series> curves;
  std::map<std::string, std::size_t> index;  // label → position in curves, in order of appearance
  std::string line;
  for (int n = 1; std::getline(f, line); ++n) {
    if (line.empty() || line[0] == '#' || line.rfind("label", 0) == 0) continue;
    std::istringstream fields(line);
    std::string label, bytes_text, busbw_text;
    std::getline(fields, label, ',');
    std::getline(fields, bytes_text, ',');
    std::getline(fields, busbw_text);
    char* end1 = nullptr;
    char* end2 = nullptr;
    const double bytes = std::strtod(bytes_text.c_str(), &end1), busbw = std::strtod(busbw_text.c_str(), &end2);
    DAGR_ENFORCE(!label.empty() && !bytes_text.empty() && !busbw_text.empty() && *end1 == '\0' &&
                     (*end2 == '\0' || *end2 == '\r') && bytes > 0 && std::isfinite(bytes) && busbw >= 0 &&
                     std::isfinite(busbw),
                 InputError, "--peers ", csv, ":", n, ": expected label,bytes,busbw (GB/s), got '", line, "'");
    auto [it, added] = index.emplace(label, curves.size());
    if (added) curves.push_back({.label = label});
    curves[it->second].x.push_back(bytes);
    curves[it->second].y.push_back(busbw);
  }
  DAGR_ENFORCE(!curves.empty(), InputError, "--peers ", csv, ": no points (expected lines label,bytes,busbw)");
  return curves;
}

void draw_bench_curves(const std::string& png, const std::string& title, const std::vector<Series>& curves) {
  write_png(png, {Chart{.title = title, .x_label = "message size", .y_label = "bus bandwidth (GB/s)", .log_x = true,
                        .series = curves}},
            900, 600);
}

}  // namespace dagr::cli
