// OpenBLAS's kernels for this CPU, where OpenBLAS does not know the CPU.
//
// OpenBLAS (Debian's libtorch multiplies matrices with it) picks its kernels
// at load time from the CPU's family and model numbers. A CPU it has no entry
// for — a virtual machine's "Intel Xeon Processor", say — gets its oldest
// x86-64 kernels ("Prescott", SSE3), though the CPU may have AVX-512: measured
// on such a 2-core KVM guest, a 64 × 784 × 256 matrix product took 1.2 ms with
// them and 0.34 ms with OpenBLAS's SkylakeX kernels, and one `dagr train` step
// of the MLP 2.5 ms where it could take about 1. OpenBLAS reads the choice
// only when it loads, from OPENBLAS_CORETYPE, so the fix has to come before
// the program starts: the process sets the variable and executes itself again.
#pragma once

#include <string>

namespace dagr::cli {

// When OpenBLAS is loaded, OPENBLAS_CORETYPE is not set, OpenBLAS chose a core
// without AVX2 and this CPU has AVX2 and FMA: sets OPENBLAS_CORETYPE to the
// best core the CPU's features allow (SkylakeX with AVX-512, else Haswell)
// and re-executes this program with the same arguments (the processes it
// starts inherit the variable). Otherwise returns and changes nothing; if the
// restart fails, warns, unsets the variable again and returns. Call first
// thing in main, before any thread or file is made.
void use_blas_kernels_for_this_cpu(char** argv);

// The OpenBLAS kernels in use, for --version: "OpenBLAS SkylakeX kernels",
// with "(OPENBLAS_CORETYPE=X)" when the variable is set; "" without OpenBLAS.
std::string blas_kernels();

}  // namespace dagr::cli
