#!/usr/bin/env bash
# dagr as an outside project uses it: install into a temporary prefix, then
#  1. the installed files are there (config + version file, pkg-config file,
#     headers) and the application's private headers are not;
#  2. a core program builds with `pkg-config dagr-comm` alone and runs;
#  3. examples/ (its own CMakeLists.txt, find_package(dagr)) configures and
#     builds against the prefix, trains without a launcher and under
#     `dagr launch -n 2`, where both ranks end with bitwise-equal parameters;
#  4. add_subdirectory(dagr) in a parent project builds the core without
#     GTest, CLI11 or libtorch and leaves the parent's compile options alone.
# Usage: examples_test.sh SOURCE_DIR BUILD_DIR [STEPS]
set -uo pipefail
if [ $# -lt 2 ]; then echo "usage: examples_test.sh SOURCE_DIR BUILD_DIR [STEPS]" >&2; exit 2; fi
src=$1 build=$2 steps=${3:-100}
source "$(dirname "$0")/testlib.sh"
prefix=$tmp/prefix
launcher=()
if command -v ccache > /dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
export OPENBLAS_NUM_THREADS=1

# 1. install
if ! cmake --install "$build" --prefix "$prefix" > "$tmp/log" 2>&1; then
  tail -20 "$tmp/log"; fail "cmake --install"; finish; exit 1
fi
for f in lib/cmake/dagr/dagrConfig.cmake lib/cmake/dagr/dagrConfigVersion.cmake lib/cmake/dagr/dagrTargets.cmake \
         lib/pkgconfig/dagr-comm.pc lib/libdagr_comm.a lib/libdagr.a bin/dagr \
         include/dagr/comm/communicator.h include/dagr/torch/collectives.h include/dagr/train/ddp.h; do
  expect "installed $f" test -e "$prefix/$f"
done
expect "no application headers installed" test -z "$(find "$prefix/include" -name 'trainer.h' -o -name 'network.h')"

# 2. the core through pkg-config
cat > "$tmp/core.cc" <<'CC'
#include <cstdio>
#include <vector>
#include "dagr/comm/communicator.h"
int main() {
  dagr::Communicator comm;  // a group of one
  std::vector<float> v{1, 2, 3};
  comm.allreduce(std::span<float>(v), dagr::ReduceOp::sum);
  std::printf("core %g\n", v[2]);
}
CC
if PKG_CONFIG_PATH=$prefix/lib/pkgconfig c++ -std=c++20 "$tmp/core.cc" -o "$tmp/core" \
     $(PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --cflags --libs dagr-comm) > "$tmp/log" 2>&1; then
  expect "pkg-config dagr-comm: builds and runs" sh -c "'$tmp/core' | grep -qx 'core 3'"
else
  tail -20 "$tmp/log"; fail "pkg-config dagr-comm: builds"
fi

# 3. the example, found through find_package(dagr) only
t0=$(date +%s)
if cmake -S "$src/examples" -B "$tmp/example" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
     "${launcher[@]}" > "$tmp/log" 2>&1 && cmake --build "$tmp/example" -j 2 >> "$tmp/log" 2>&1; then
  ok "examples/ configures and builds against the install ($(( $(date +%s) - t0 )) s)"
  example=$tmp/example/fashion_ddp
  if timeout 300 "$example" "$steps" > "$tmp/one" 2>&1; then
    expect "one process, no launcher" grep -q "^rank 0 of 1 parameters [0-9a-f]\{16\}$" "$tmp/one"
  else
    cat "$tmp/one"; fail "one process, no launcher"
  fi
  if timeout 300 "$prefix/bin/dagr" launch -n 2 -- "$example" "$steps" > "$tmp/two" 2>&1; then
    hashes=$(sed -n 's/.*rank [01] of 2 parameters \([0-9a-f]*\)$/\1/p' "$tmp/two" | sort -u)
    grep "parameters" "$tmp/two"
    expect "dagr launch -n 2: two ranks report" test "$(grep -c 'of 2 parameters' "$tmp/two")" -eq 2
    expect "dagr launch -n 2: bitwise-equal parameters" test "$(echo "$hashes" | wc -w)" -eq 1
    expect "dagr launch -n 2: the loss went down" awk '/rank 0 step/ {l[++n]=$NF} END {exit !(n >= 2 && l[n] < l[1])}' "$tmp/two"
  else
    cat "$tmp/two"; fail "dagr launch -n 2"
  fi
else
  tail -30 "$tmp/log"; fail "examples/ configures and builds against the install"
fi

# 4. add_subdirectory(dagr), core only, in a parent project with flags of its own
mkdir -p "$tmp/parent"
cp "$tmp/core.cc" "$tmp/parent/app.cc"
cat > "$tmp/parent/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.25)
project(parent LANGUAGES CXX)
add_subdirectory("$src" dagr)
get_directory_property(options COMPILE_OPTIONS)
if(options OR CMAKE_CXX_STANDARD OR TARGET GTest::gtest OR TARGET dagr OR TARGET comm_worker)
  message(FATAL_ERROR "dagr leaked into the parent: options '\${options}', standard '\${CMAKE_CXX_STANDARD}'")
endif()
add_executable(app app.cc)
target_link_libraries(app PRIVATE dagr::comm)
CM
t0=$(date +%s)
if cmake -S "$tmp/parent" -B "$tmp/parent/build" -DDAGR_WITH_TORCH=OFF -DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON \
     -DCMAKE_DISABLE_FIND_PACKAGE_CLI11=ON -DCMAKE_DISABLE_FIND_PACKAGE_Torch=ON "${launcher[@]}" > "$tmp/log" 2>&1 &&
   cmake --build "$tmp/parent/build" -j 2 --target app >> "$tmp/log" 2>&1; then
  expect "add_subdirectory(dagr): builds and runs ($(( $(date +%s) - t0 )) s)" \
    sh -c "'$tmp/parent/build/app' | grep -qx 'core 3'"
else
  tail -30 "$tmp/log"; fail "add_subdirectory(dagr) in a parent project"
fi
finish
