// Shared buffers: memory every rank of the group maps, and the allreduce that
// runs in place on it without staging (dagr/comm/shared_buffer.h).
//
// allocate(): rank 0 creates a segment named after the group and the
// allocation's number — a header page, then one block per rank, each rounded
// up to whole pages — and marks it ready; every rank maps it and raises its
// flag in the header; once rank 0 has seen every flag it removes the name.
// Each rank keeps a weak reference to what it mapped, so a call's buffer can
// be recognised as "block r of allocation a, at offset o".
//
// The allreduce, when every rank's buffer is its own block of the same
// allocation at the same offset (each rank says where its buffer lies in its
// arrival slot; any difference, and the staged pipeline runs instead):
//
//   1. the arrival: every rank has entered the call, so every block holds its
//      rank's input;
//   2. rank j owns piece j of the vector (cache-line-aligned, as the pipeline
//      cuts it). In chunks that stay in cache it sums piece j over every
//      rank's block, in rank order (the same bits as every other path), into
//      its own block, and copies the result into every peer's block. Nobody
//      else reads or writes piece j, so nothing races;
//   3. it publishes `written` and waits for every peer's: then every piece of
//      its own block holds the result, and no peer writes into it any more.
//
// Per rank that reads N bytes and writes N (plus N · (size - 2) / size of
// copies from cache beyond 2 ranks), where the staged pipeline moves about
// 3.5 × N: a copy into staging, the reduction, a copy out.
#include <algorithm>
#include <cstring>
#include <thread>

#include "dagr/error.h"
#include "reduce_kernels.h"
#include "shm/shm_backend.h"

namespace dagr::detail {
namespace {

constexpr std::size_t kPage = 4096;
constexpr std::uint64_t kBlocksReady = 0x64616772'62756631ull;  // "dagrbuf1"

struct BlocksHeader {
  std::atomic<std::uint64_t> magic;
  std::atomic<std::uint8_t> mapped[kMaxRanks];  // rank r has the segment mapped
};
static_assert(sizeof(BlocksHeader) <= kPage);

constexpr std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }
constexpr std::size_t kChunkBytes = 64 << 10;  // summed, then copied out, while in cache

}  // namespace

SharedBuffer ShmBackend::allocate(std::size_t bytes, Clock::time_point deadline) {
  if (size_ == 1 || name_.empty()) return Backend::allocate(bytes, deadline);
  const std::uint64_t allocation = ++allocations_;
  const std::string name = concat(name_, ".b", allocation);
  const std::size_t stride = round_up(std::max<std::size_t>(bytes, 1), kPage);
  const std::size_t total = kPage + static_cast<std::size_t>(size_) * stride;
  context_.deadline = deadline;
  context_.describe = [bytes] { return concat("allocate_shared(", bytes, " bytes)"); };
  waiter_.check_group(context_);

  std::shared_ptr<Segment> segment;
  if (rank_ == 0) {
    segment = std::make_shared<Segment>(Segment::create(name, total));
    reinterpret_cast<BlocksHeader*>(segment->data())->magic.store(kBlocksReady, std::memory_order_release);
  } else {
    // Poll for the name, briefly each time; between tries the waiter watches
    // rank 0 (a PeerError once it is gone) and the deadline (a TimeoutError).
    while (!segment) {
      try {
        segment = std::make_shared<Segment>(Segment::open(name, Clock::now() + std::chrono::milliseconds(20)));
      } catch (const TimeoutError&) {
        const auto retry = Clock::now() + std::chrono::milliseconds(20);
        waiter_.wait(0, context_, [retry] { return Clock::now() >= retry; });
      }
    }
    DAGR_ENFORCE(segment->size() >= total, Error, "shared buffers /dev/shm", name, " hold ", segment->size(),
                 " bytes, not the ", total, " this rank expects");
  }
  auto* header = reinterpret_cast<BlocksHeader*>(segment->data());
  try {
    waiter_.wait(0, context_, [&] { return header->magic.load(std::memory_order_acquire) == kBlocksReady; });
    header->mapped[rank_].store(1, std::memory_order_release);
    waiter_.notify();
    if (rank_ == 0) {
      for (int p = 1; p < size_; ++p)
        waiter_.wait(p, context_, [&] { return header->mapped[p].load(std::memory_order_acquire) == 1; });
      Segment::unlink(name);
    }
  } catch (...) {
    if (rank_ == 0) Segment::unlink(name);
    throw;
  }

  std::erase_if(shared_, [](const SharedBlocks& b) { return b.segment.expired(); });
  std::byte* base = segment->data() + kPage;
  shared_.push_back({allocation, segment, base, stride, bytes});
  std::byte* mine = base + static_cast<std::size_t>(rank_) * stride;
  return SharedBuffer(std::shared_ptr<void>(segment, mine), mine, bytes, true);
}

ShmBackend::SharedPlace ShmBackend::locate(const Request& r) const {
  if (r.kind != OpKind::allreduce || r.in != r.out || r.transform || r.count == 0) return {};
  const auto* p = static_cast<const std::byte*>(r.out);
  for (const SharedBlocks& b : shared_) {
    const std::byte* mine = b.base + static_cast<std::size_t>(rank_) * b.stride;
    if (p >= mine && p < mine + b.bytes && r.bytes() <= static_cast<std::size_t>(mine + b.bytes - p) &&
        !b.segment.expired())
      return {b.allocation, static_cast<std::uint64_t>(p - mine)};
  }
  return {};
}

const ShmBackend::SharedBlocks* ShmBackend::in_shared_buffers() const {
  if (place_.allocation == 0) return nullptr;
  for (int p = 0; p < size_; ++p) {
    SharedPlace theirs;
    std::memcpy(&theirs, view_.payload(p, calls_), sizeof theirs);
    if (!(theirs == place_)) return nullptr;
  }
  for (const SharedBlocks& b : shared_)
    if (b.allocation == place_.allocation) return &b;
  return nullptr;
}

void ShmBackend::shared_allreduce(const Request& r, const SharedBlocks& blocks, std::size_t offset) {
  const std::size_t es = element_size(r.dtype);
  auto at = [&](int p, std::size_t element) {
    return blocks.base + static_cast<std::size_t>(p) * blocks.stride + offset + element * es;
  };
  // Piece j of the vector belongs to rank j (as the pipeline cuts a segment).
  const std::size_t align = std::max<std::size_t>(1, kCacheLine / es);
  const std::size_t chunk = (r.count + static_cast<std::size_t>(size_) - 1) / static_cast<std::size_t>(size_);
  const std::size_t piece = (chunk + align - 1) / align * align;
  const std::size_t begin = std::min(static_cast<std::size_t>(rank_) * piece, r.count);
  const std::size_t end = std::min(begin + piece, r.count);
  const int next = (rank_ + 1) % size_;  // with 2 ranks the only peer: written by the reduction itself

  const std::size_t step = std::max<std::size_t>(kChunkBytes / es, 1);
  for (std::size_t b = begin; b < end; b += step) {
    const std::size_t len = std::min(step, end - b);
    for (int p = 0; p < size_; ++p) sources_[p] = at(p, b);
    reduce_sources({at(rank_, b), at(next, b)}, sources_.data(), size_, len, r.dtype, r.op);
    for (int p = 0; p < size_; ++p)
      if (p != rank_ && p != next) std::memcpy(at(p, b), at(rank_, b), len * es);
  }
  const std::uint64_t call = calls_;
  publish(view_.control(rank_).written, call);
  for (int p = 0; p < size_; ++p)
    if (p != rank_) wait_counter(p, &RankControl::written, call);
}

}  // namespace dagr::detail
