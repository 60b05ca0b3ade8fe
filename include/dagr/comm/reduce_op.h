// How a reducing collective combines the ranks' values.
#pragma once

#include <cstdint>
#include <string_view>

namespace dagr {

// avg divides the sum by the number of ranks (integer division for integer types).
enum class ReduceOp : std::uint8_t { sum, avg, min, max, prod };

std::string_view name(ReduceOp op);
ReduceOp parse_reduce_op(std::string_view text);  // InputError on an unknown name

}  // namespace dagr
