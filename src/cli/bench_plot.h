// `dagr bench --plot FILE.png [--peers FILE.csv]`: bus bandwidth against
// message size, dagr's measured curve beside other libraries' figures.
//
// The peers' file is CSV, one point a line: label,bytes,busbw (GB/s, 1e9 B/s,
// as dagr bench prints it); a line starting with '#' or "label" is skipped.
// Each label is one curve.
#pragma once

#include <string>
#include <vector>

#include "plot.h"

namespace dagr::cli {

// InputError naming the file and line for anything that is not such a point.
std::vector<Series> read_peer_curves(const std::string& csv);

void draw_bench_curves(const std::string& png, const std::string& title, const std::vector<Series>& curves);

}  // namespace dagr::cli
