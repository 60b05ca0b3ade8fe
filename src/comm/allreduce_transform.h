// An allreduce whose words on the wire are not its input: each rank encodes its
// own floats into uint32 words, the words are summed mod 2^32, and the sums are
// decoded into floats. Secure aggregation is one (secure_aggregation.cc): its
// words are masked, so what crosses shared memory or the network is noise.
//
// A backend that can (shared memory) fuses the transform into its own passes,
// so it moves no more bytes than a plain allreduce: the encode takes the place
// of its copy-in, and the decode is done by the rank that sums a piece, as it
// sums it. Everywhere else the generic form runs: encode everything, a plain
// int32 sum, decode everything (run_unfused).
//
// The transform is told which elements each call covers, so it can keep
// per-element state (a mask stream it can seek in, checksums over the index).
// Every element is encoded once by its rank, and decoded by every rank either
// itself or through a copy of the decoded floats; `checked` marks the one call
// per element, over all ranks together, that should count it in checksums.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dagr::detail {

class Backend;
struct Request;

struct AllreduceTransform {
  virtual ~AllreduceTransform() = default;
  // words[0, count) = this rank's encoding of input elements [first, first + count).
  virtual void encode(std::size_t first, std::size_t count, std::uint32_t* words) = 0;
  // Elements [first, first + count): the sum of the `n` word arrays in
  // `sources` (each pointing at element `first`) and, with `own`, of this
  // rank's encoding (made here), decoded into the output and, when `copy` is
  // not null, into copy[0, count) as well.
  virtual void reduce(std::size_t first, std::size_t count, const std::uint32_t* const* sources, int n, bool own,
                      bool checked, float* copy) = 0;
};

// The generic form on any backend: r is an allreduce(sum, int32) of r.count
// elements carrying r.transform; rank 0 does the checked decode.
void run_unfused(Backend& backend, const Request& r);

}  // namespace dagr::detail
