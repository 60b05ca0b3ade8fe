#include "shm/layout.h"

namespace dagr::detail {
namespace {
constexpr std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }
constexpr std::size_t kPage = 4096;
}  // namespace

Layout::Layout(int n, const ShmGeometry& g) : size(n), geometry(g) {
  const auto ranks = static_cast<std::size_t>(n);
  control = round_up(sizeof(SegmentHeader), kCacheLine);
  slots = round_up(control + ranks * sizeof(RankControl), kPage);
  slot_bytes = round_up(kSlotPayloadOffset + g.small_max_bytes, kCacheLine);
  staging = round_up(slots + ranks * 2 * slot_bytes, kPage);
  channels = staging + ranks * g.buffers * static_cast<std::size_t>(g.segment_bytes);
  channel_stride = round_up(sizeof(ChannelControl) + g.channel_bytes, kPage);
  total = channels + ranks * ranks * channel_stride;
}

}  // namespace dagr::detail
