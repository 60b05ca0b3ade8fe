// Point-to-point messages through the shared-memory transport.
//
// Every ordered pair (from, to) owns a ring buffer with two monotonic byte
// counters: `head` (written by the sender) and `tail` (read by the receiver).
// A message is a MessageHeader (its fingerprint and tag) followed by its
// bytes; both stream through the ring as space allows, so a message of any
// size passes through a fixed amount of memory. The receiver compares the
// header with what it expected; on a mismatch it marks the channel broken,
// which a sender still streaming into it sees as a MismatchError too.
#include <algorithm>
#include <cstring>

#include "dagr/error.h"
#include "shm/shm_backend.h"

namespace dagr::detail {
namespace {

void check_peer(int peer, int size, int self) {
  DAGR_ENFORCE(peer >= 0 && peer < size && peer != self, InputError, "rank ", self,
               ": peer rank ", peer, " is not another rank of this group of ", size);
}

}  // namespace

void ShmBackend::send(const Request& r, const WaitContext& context) const {
  check_peer(r.root, size_, rank_);
  ChannelControl& ch = view_.channel(rank_, r.root);
  std::byte* ring = view_.ring(rank_, r.root);
  const std::uint64_t capacity = view_.layout().geometry.channel_bytes;
  std::uint64_t head = ch.head.value.load(std::memory_order_relaxed);

  auto put = [&](const std::byte* src, std::size_t n) {
    while (n > 0) {
      std::uint64_t tail = 0;
      waiter_.wait(r.root, context, [&] {
        tail = ch.tail.value.load(std::memory_order_acquire);
        return head - tail < capacity || ch.broken.load(std::memory_order_relaxed) != 0;
      });
      DAGR_ENFORCE(ch.broken.load() == 0, MismatchError, "rank ", r.root,
                   " rejected this rank's message: its recv did not match ", context.describe());
      const std::size_t at = head % capacity;
      const std::size_t m = std::min<std::size_t>({n, capacity - (head - tail), capacity - at});
      std::memcpy(ring + at, src, m);
      head += m;
      src += m;
      n -= m;
      ch.head.value.store(head, std::memory_order_release);
      waiter_.notify();
    }
  };
  MessageHeader header{Fingerprint::of(r), r.tag};
  put(reinterpret_cast<const std::byte*>(&header), sizeof header);
  put(static_cast<const std::byte*>(r.in), r.bytes());
}

void ShmBackend::recv(const Request& r, const WaitContext& context) const {
  check_peer(r.root, size_, rank_);
  ChannelControl& ch = view_.channel(r.root, rank_);
  const std::byte* ring = view_.ring(r.root, rank_);
  const std::uint64_t capacity = view_.layout().geometry.channel_bytes;
  std::uint64_t tail = ch.tail.value.load(std::memory_order_relaxed);

  auto take = [&](std::byte* dst, std::size_t n) {
    while (n > 0) {
      std::uint64_t head = 0;
      waiter_.wait(r.root, context, [&] {
        head = ch.head.value.load(std::memory_order_acquire);
        return head != tail;
      });
      const std::size_t at = tail % capacity;
      const std::size_t m = std::min<std::size_t>({n, head - tail, capacity - at});
      std::memcpy(dst, ring + at, m);
      tail += m;
      dst += m;
      n -= m;
      ch.tail.value.store(tail, std::memory_order_release);
      waiter_.notify();
    }
  };
  MessageHeader header{};
  take(reinterpret_cast<std::byte*>(&header), sizeof header);
  Request expected = r;
  expected.kind = OpKind::send;
  const Fingerprint want = Fingerprint::of(expected);
  if (!(header.fingerprint == want) || header.tag != r.tag) {
    ch.broken.store(1, std::memory_order_release);
    waiter_.notify();
    const std::string peer = waiter_.name_of(r.root);
    throw MismatchError(concat(waiter_.name_of(rank_), " expected ", want.describe(), " tag ", r.tag, " from ", peer,
                               " but ", peer, " sent ", header.fingerprint.describe(), " tag ", header.tag));
  }
  take(static_cast<std::byte*>(r.out), r.bytes());
}

}  // namespace dagr::detail
