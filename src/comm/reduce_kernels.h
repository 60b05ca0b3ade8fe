// The arithmetic of every reducing collective, in one place.
//
// reduce_sources combines n_sources arrays element by element, always in
// source order (source 0 first). Every algorithm, small or large, passes the
// ranks' data in rank order, so a sum gives the same bits on every rank, run
// after run, whichever path computed it. float16 and bfloat16 accumulate in
// float32 across all sources and round once at the end.
#pragma once

#include <cstddef>

#include "dagr/comm/dtype.h"
#include "dagr/comm/reduce_op.h"

namespace dagr::detail {

struct ReduceTarget {
  void* dst;             // receives the result
  void* dst2 = nullptr;  // optional second copy of the result (e.g. a shared staging buffer)
};

// dst[i] = sources[0][i] op sources[1][i] op …, for i < count. For avg the sum
// is divided by n_sources. dst may alias a source (same index only).
void reduce_sources(ReduceTarget target, const void* const* sources, int n_sources,
                    std::size_t count, DType dtype, ReduceOp op);

// data[i] /= divisor (integer division for integer types): avg after a sum.
void divide(void* data, std::size_t count, DType dtype, int divisor);

}  // namespace dagr::detail
