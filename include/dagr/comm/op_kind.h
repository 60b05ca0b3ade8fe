// The kinds of call a communicator runs (collectives and point-to-point).
#pragma once

#include <cstdint>
#include <string_view>

namespace dagr {

enum class OpKind : std::uint8_t {
  barrier, allreduce, reduce, broadcast, allgather, reduce_scatter, send, recv
};
std::string_view name(OpKind k);

}  // namespace dagr
