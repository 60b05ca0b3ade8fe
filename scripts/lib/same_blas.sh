# The anchors on the BLAS kernels dagr uses: where OpenBLAS does not know the
# CPU, dagr picks better kernels than OpenBLAS's guess (src/cli/blas_core.h)
# and says so in --version; exporting the same OPENBLAS_CORETYPE gives the
# libtorch and PyTorch anchors the same kernels, so the ratios compare runtimes,
# not kernels. Source it, then: same_blas_as DAGR
same_blas_as() {
  local core
  core=$("$1" --version | sed -n 's/.*(OPENBLAS_CORETYPE=\([^)]*\)).*/\1/p')
  if [ -n "$core" ]; then export OPENBLAS_CORETYPE=$core; fi
}
