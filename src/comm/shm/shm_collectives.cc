// The large-message path of the shared-memory collectives.
//
// Bandwidth-optimal reduction ("reduce-scatter, then allgather"), pipelined:
// the message is cut into segments that fit a staging buffer; each segment is
// cut into one piece per rank, and rank j owns piece j. For every segment:
//
//   1. copy-in   each rank copies the pieces it does not own into its staging
//                buffer, and publishes `posted`;
//   2. reduce    each rank reduces its own piece, reading its own input
//                directly and every peer's copy from their staging buffers, in
//                rank order (so every rank's bits agree); it writes the result
//                to its output and back into its staging buffer; `reduced`;
//   3. gather    each rank copies the other reduced pieces from their owners'
//                staging buffers into its output; `consumed`.
//
// Each rank reads (size-1)/size of the message from peers and reduces 1/size
// of it, whatever the number of ranks. Staging buffers rotate (geometry.buffers
// of them), so a rank may run ahead of the slowest by that many segments, and
// memory stays bounded whatever the message size. A buffer is reused for
// segment g only once every peer's `consumed` has passed g - buffers.
//
// A transformed allreduce (allreduce_transform.h) runs the same steps: the
// copy-in encodes instead of copying, and the reduce encodes the rank's own
// piece, sums the peers' words and decodes; the gather copies decoded floats.
//
// The counters are monotonic over the life of the group; every rank advances
// them through the same segment numbers because fingerprints already matched.
#include <algorithm>
#include <cstring>

#include "allreduce_transform.h"
#include "log.h"
#include "reduce_kernels.h"
#include "shm/shm_backend.h"

namespace dagr::detail {
namespace {

constexpr std::size_t ceil_div(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

// Element offsets of rank j's piece of segment k.
struct Piece {
  std::size_t in;     // in the input
  std::size_t stage;  // in a staging buffer
  std::size_t out;    // in the output
  std::size_t len;
};

// allreduce / reduce: the vector in segments of `seg` elements; each segment
// split in `size` cache-line-aligned chunks, chunk j for rank j.
struct VectorPlan {
  std::size_t count, seg, align;
  int size;
  std::size_t segments() const { return ceil_div(count, seg); }
  Piece piece(std::size_t k, int j) const {
    const std::size_t base = k * seg;
    const std::size_t len = std::min(seg, count - base);
    const std::size_t chunk = ceil_div(ceil_div(len, static_cast<std::size_t>(size)), align) * align;
    const std::size_t b = std::min(static_cast<std::size_t>(j) * chunk, len);
    const std::size_t e = std::min(b + chunk, len);
    return {base + b, b, base + b, e - b};
  }
};

// reduce_scatter: input block j belongs to rank j; segment k carries the k-th
// slice of every block.
struct BlockPlan {
  std::size_t block, slice;
  std::size_t segments() const { return ceil_div(block, slice); }
  Piece piece(std::size_t k, int j) const {
    const std::size_t b = k * slice;
    return {static_cast<std::size_t>(j) * block + b, static_cast<std::size_t>(j) * slice, b,
            std::min(slice, block - b)};
  }
};

}  // namespace

void ShmBackend::publish(PaddedCounter& counter, std::uint64_t value) {
  counter.value.store(value, std::memory_order_release);
  waiter_.notify();
}

void ShmBackend::wait_counter(int peer, PaddedCounter RankControl::*counter, std::uint64_t at_least) {
  PaddedCounter& c = view_.control(peer).*counter;
  waiter_.wait(peer, context_, [&] { return c.value.load(std::memory_order_acquire) >= at_least; });
}

void ShmBackend::wait_buffer_free(std::uint64_t g) {
  const std::uint64_t buffers = view_.layout().geometry.buffers;
  if (g < buffers) return;
  for (int p = 0; p < size_; ++p)
    if (p != rank_) wait_counter(p, &RankControl::consumed, g - buffers + 1);
}

void ShmBackend::large_path(const Request& r) {
  const std::size_t es = element_size(r.dtype);
  const std::size_t seg = view_.layout().geometry.segment_bytes / es;
  const std::size_t align = std::max<std::size_t>(1, kCacheLine / es);
  switch (r.kind) {
    case OpKind::allreduce:
      if (const SharedBlocks* blocks = in_shared_buffers(); blocks) {
        DAGR_LOG_DEBUG("shm {} collective #{}: in place on shared buffers", name_, calls_);
        return shared_allreduce(r, *blocks, place_.offset);
      }
      return reduce_pipeline(r, VectorPlan{r.count, seg, align, size_}, Gather::all);
    case OpKind::reduce:
      return reduce_pipeline(r, VectorPlan{r.count, seg, align, size_}, Gather::root);
    case OpKind::reduce_scatter:
      return reduce_pipeline(r, BlockPlan{r.count, seg / static_cast<std::size_t>(size_)}, Gather::none);
    case OpKind::broadcast: return broadcast_pipeline(r);
    case OpKind::allgather: return allgather_pipeline(r);
    default: return;
  }
}

template <class Plan>
void ShmBackend::reduce_pipeline(const Request& r, const Plan& plan, Gather gather) {
  const std::size_t es = element_size(r.dtype);
  const auto* in = static_cast<const std::byte*>(r.in);
  auto* out = static_cast<std::byte*>(r.out);
  RankControl& me = view_.control(rank_);
  // Who writes the result where: everyone into `out` and, for peers to gather,
  // into staging; for reduce, ranks other than the root into staging only.
  const bool to_out = gather != Gather::root || rank_ == r.root;
  const bool to_stage = gather == Gather::all || (gather == Gather::root && rank_ != r.root);
  const bool gathers = gather == Gather::all || (gather == Gather::root && rank_ == r.root);
  const std::size_t segments = plan.segments();

  for (std::size_t k = 0; k < segments; ++k) {
    const std::uint64_t g = segments_ + k;
    std::byte* mine = view_.staging(rank_, g);

    wait_buffer_free(g);  // 1. copy-in
    for (int j = 0; j < size_; ++j) {
      if (j == rank_) continue;
      const Piece p = plan.piece(k, j);
      if (r.transform)
        r.transform->encode(p.in, p.len, reinterpret_cast<std::uint32_t*>(mine + p.stage * es));
      else
        std::memcpy(mine + p.stage * es, in + p.in * es, p.len * es);
    }
    publish(me.posted, g + 1);

    const Piece own = plan.piece(k, rank_);  // 2. reduce
    for (int p = 0; p < size_; ++p) {
      if (p != rank_) wait_counter(p, &RankControl::posted, g + 1);
      sources_[p] = p == rank_ ? in + own.in * es : view_.staging(p, g) + own.stage * es;
    }
    std::byte* result_out = to_out ? out + own.out * es : nullptr;
    std::byte* result_stage = to_stage ? mine + own.stage * es : nullptr;
    if (r.transform) {  // an allreduce: this rank encodes its own piece as it sums the peers' words
      int n = 0;
      for (int p = 0; p < size_; ++p)
        if (p != rank_) words_[n++] = reinterpret_cast<const std::uint32_t*>(sources_[p]);
      r.transform->reduce(own.in, own.len, words_.data(), n, true, true, reinterpret_cast<float*>(result_stage));
    } else {
      reduce_sources({result_out ? result_out : result_stage, result_out ? result_stage : nullptr},
                     sources_.data(), size_, own.len, r.dtype, r.op);
    }

    if (gather != Gather::none) {  // 3. gather
      publish(me.reduced, g + 1);
      for (int j = 0; gathers && j < size_; ++j) {
        if (j == rank_) continue;
        const Piece p = plan.piece(k, j);
        wait_counter(j, &RankControl::reduced, g + 1);
        std::memcpy(out + p.out * es, view_.staging(j, g) + p.stage * es, p.len * es);
      }
    }
    publish(me.consumed, g + 1);
  }
  segments_ += segments;
}

// The root copies each segment into its staging buffer once; everyone copies it out.
void ShmBackend::broadcast_pipeline(const Request& r) {
  const std::size_t es = element_size(r.dtype);
  const std::size_t seg = view_.layout().geometry.segment_bytes / es;
  const std::size_t segments = ceil_div(r.count, seg);
  RankControl& me = view_.control(rank_);
  for (std::size_t k = 0; k < segments; ++k) {
    const std::uint64_t g = segments_ + k;
    const std::size_t offset = k * seg * es;
    const std::size_t bytes = std::min(seg, r.count - k * seg) * es;
    auto* out = static_cast<std::byte*>(r.out) + offset;
    if (rank_ == r.root) {
      const auto* in = static_cast<const std::byte*>(r.in) + offset;
      wait_buffer_free(g);
      std::memcpy(view_.staging(rank_, g), in, bytes);
      publish(me.posted, g + 1);
      if (out != in) std::memcpy(out, in, bytes);
    } else {
      wait_counter(r.root, &RankControl::posted, g + 1);
      std::memcpy(out, view_.staging(r.root, g), bytes);
    }
    publish(me.consumed, g + 1);
  }
  segments_ += segments;
}

// Every rank stages its own contribution segment by segment; all copy everyone's out.
void ShmBackend::allgather_pipeline(const Request& r) {
  const std::size_t es = element_size(r.dtype);
  const std::size_t seg = view_.layout().geometry.segment_bytes / es;
  const std::size_t segments = ceil_div(r.count, seg);
  const std::size_t block = r.count * es;
  const auto* in = static_cast<const std::byte*>(r.in);
  auto* out = static_cast<std::byte*>(r.out);
  RankControl& me = view_.control(rank_);
  for (std::size_t k = 0; k < segments; ++k) {
    const std::uint64_t g = segments_ + k;
    const std::size_t offset = k * seg * es;
    const std::size_t bytes = std::min(seg, r.count - k * seg) * es;
    wait_buffer_free(g);
    std::memcpy(view_.staging(rank_, g), in + offset, bytes);
    publish(me.posted, g + 1);
    std::byte* own = out + rank_ * block + offset;
    if (own != in + offset) std::memcpy(own, in + offset, bytes);
    for (int j = 0; j < size_; ++j) {
      if (j == rank_) continue;
      wait_counter(j, &RankControl::posted, g + 1);
      std::memcpy(out + j * block + offset, view_.staging(j, g), bytes);
    }
    publish(me.consumed, g + 1);
  }
  segments_ += segments;
}

}  // namespace dagr::detail
