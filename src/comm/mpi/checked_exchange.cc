#include "mpi/checked_exchange.h"

#include <algorithm>
#include <cstring>

#include "mpi/mpi_runtime.h"
#include "reduce_kernels.h"

namespace dagr::detail {
namespace {
constexpr int kHeaderTag = 1;  // a header, with its data when that is inline
constexpr int kDataTag = 2;    // data too large to go inline, right after its header
constexpr int kHalfTag = 3;    // halving's second round: a reduced half

// The (offset, size) of each message of `bytes` of data sent in pieces of
// `chunk` bytes (0: one message).
template <class F>
void for_each_chunk(std::size_t bytes, std::size_t chunk, F f) {
  if (chunk == 0) chunk = bytes;
  for (std::size_t at = 0; at < bytes; at += chunk) f(at, std::min(chunk, bytes - at));
}

// The sender's choice of message size for `bytes` of data (see kChunkBytes).
std::size_t chunk_for(std::size_t bytes, bool halving) {
  if (bytes <= CheckedExchange::kChunkedBytes) return CheckedExchange::kChunkBytes;
  return halving ? CheckedExchange::kHalvingChunkBytes : bytes;
}
}  // namespace

CheckedExchange::CheckedExchange(const Request& r, bool with_data, MPI_Comm comm, int rank, int size)
    : request_(r), with_data_(with_data), comm_(comm), rank_(rank) {
  mine_.fingerprint = Fingerprint::of(r);
  if (request_.op == ReduceOp::avg) request_.op = ReduceOp::sum;  // the caller divides
  int p = 1;
  while (p * 2 <= size) p *= 2;
  if (rank >= p) {  // an extra rank: hand the part over, get the result back
    rounds_.push_back({rank - p, true, false, false});
    rounds_.push_back({rank - p, false, true, true});
  } else {
    const bool has_extra = rank + p < size;
    if (has_extra) rounds_.push_back({rank + p, false, true, false});
    for (int mask = 1; mask < p; mask *= 2) rounds_.push_back({rank ^ mask, true, true, false});
    if (has_extra) rounds_.push_back({rank + p, true, false, false});
  }
  halving_ = with_data && size == 2 && r.bytes() >= kHalvingBytes;
  if (halving_) {  // rank 0 owns the first count / 2 elements
    const std::size_t first = r.count / 2 * element_size(r.dtype);
    const Range low{0, first}, high{first, r.bytes() - first};
    own_ = rank == 0 ? low : high;
    other_ = rank == 0 ? high : low;
  }
}

void CheckedExchange::post() {
  const Round& round = rounds_[round_];
  requests_.assign(1, MPI_REQUEST_NULL);
  chunk_requests_.clear();
  chunks_in_ = 0;
  if (round.receive)
    check_mpi(MPI_Irecv(receive_buffer_, static_cast<int>(kMessageBytes), MPI_BYTE, round.peer,
                        kHeaderTag, comm_, &requests_[0]),
              "MPI_Irecv (fingerprint)");
  data_receive_posted_ = !round.receive;
  if (!round.send) return;
  Header h = mine_;
  const Range sent = halving_ ? other_ : Range{0, request_.bytes()};
  const auto* data = static_cast<const std::byte*>(have_partial_ ? request_.out : request_.in) + sent.offset;
  h.data_bytes = with_data_ && !mine_.mismatch ? sent.bytes : 0;
  h.inline_data = h.data_bytes <= kInlineBytes;
  h.chunk_bytes = chunk_for(h.data_bytes, halving_);
  const std::size_t message = sizeof(Header) + (h.inline_data ? h.data_bytes : 0);
  std::memcpy(send_buffer_, &h, sizeof h);
  if (h.inline_data && h.data_bytes > 0) std::memcpy(send_buffer_ + sizeof h, data, h.data_bytes);
  requests_.push_back(MPI_REQUEST_NULL);
  check_mpi(MPI_Isend(send_buffer_, static_cast<int>(message), MPI_BYTE, round.peer, kHeaderTag,
                      comm_, &requests_.back()),
            "MPI_Isend (fingerprint)");
  if (h.inline_data) return;
  // At most INT_MAX bytes in all: the backend sends no more through here.
  for_each_chunk(h.data_bytes, h.chunk_bytes, [&](std::size_t at, std::size_t size) {
    requests_.push_back(MPI_REQUEST_NULL);
    check_mpi(MPI_Isend(data + at, static_cast<int>(size), MPI_BYTE, round.peer, kDataTag, comm_, &requests_.back()),
              "MPI_Isend (data)");
  });
}

// The header is in: whether it matches this rank's, and receiving the data it
// announces, whatever its size, in the messages it announces.
void CheckedExchange::post_data_receives() {
  data_receive_posted_ = true;
  Header h;
  std::memcpy(&h, receive_buffer_, sizeof h);
  const std::size_t expected = halving_ ? own_.bytes : request_.bytes();
  header_agreed_ = h.mismatch == 0 && h.fingerprint == mine_.fingerprint && (!with_data_ || h.data_bytes == expected);
  if (h.inline_data) return;
  receive_data_.reset(new std::byte[h.data_bytes]);
  chunk_bytes_ = h.chunk_bytes != 0 ? h.chunk_bytes : h.data_bytes;  // as for_each_chunk reads 0
  for_each_chunk(h.data_bytes, h.chunk_bytes, [&](std::size_t at, std::size_t size) {
    chunk_requests_.push_back(MPI_REQUEST_NULL);
    check_mpi(MPI_Irecv(receive_data_.get() + at, static_cast<int>(size), MPI_BYTE, rounds_[round_].peer, kDataTag,
                        comm_, &chunk_requests_.back()),
              "MPI_Irecv (data)");
  });
}

// Tests the data messages in the order they come; with halving and agreeing
// headers, reduces each into this rank's half as it arrives. True once all are in.
bool CheckedExchange::receive_chunks() {
  const bool reduce = halving_ && header_agreed_ && !mine_.mismatch;
  const std::size_t element = element_size(request_.dtype);
  while (chunks_in_ < chunk_requests_.size()) {
    int done = 0;
    check_mpi(MPI_Test(&chunk_requests_[chunks_in_], &done, MPI_STATUS_IGNORE), "MPI_Test (data)");
    if (!done) return false;
    if (reduce) {  // a halving chunk (never inline)
      const std::size_t offset = chunks_in_ * chunk_bytes_, bytes = std::min(chunk_bytes_, own_.bytes - offset);
      const std::size_t at = own_.offset + offset;
      const void* sources[2] = {static_cast<const std::byte*>(request_.in) + at, receive_data_.get() + offset};
      if (rounds_[round_].peer < rank_) std::swap(sources[0], sources[1]);
      reduce_sources({static_cast<std::byte*>(request_.out) + at}, sources, 2, bytes / element, request_.dtype,
                     request_.op);
    }
    ++chunks_in_;
  }
  return true;
}

bool CheckedExchange::step() {
  while (round_ < rounds_.size()) {
    if (!posted_) {
      post();
      posted_ = true;
    }
    int done = 0;
    if (!data_receive_posted_) {
      check_mpi(MPI_Test(&requests_[0], &done, MPI_STATUS_IGNORE), "MPI_Test (fingerprint exchange)");
      if (!done) return false;
      post_data_receives();
    }
    if (!receive_chunks()) return false;
    check_mpi(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE),
              "MPI_Testall (fingerprint exchange)");
    if (!done) return false;
    finish_round();
    ++round_;
    posted_ = false;
  }
  if (halving_ && !mine_.mismatch) return swap_halves();
  if (with_data_ && !mine_.mismatch && !have_partial_ && request_.in != request_.out && request_.bytes() > 0)
    std::memcpy(request_.out, request_.in, request_.bytes());  // a group of one
  return true;
}

void CheckedExchange::finish_round() {
  const Round& round = rounds_[round_];
  if (!round.receive) return;
  if (!header_agreed_) mine_.mismatch = 1;
  if (mine_.mismatch || !with_data_) return;
  if (halving_) return;  // this rank's half was reduced as it came (receive_chunks)
  Header h;
  std::memcpy(&h, receive_buffer_, sizeof h);
  const void* data = h.inline_data ? static_cast<const void*>(receive_buffer_ + sizeof h)
                                   : static_cast<const void*>(receive_data_.get());
  if (round.result) {
    if (h.data_bytes > 0) std::memcpy(request_.out, data, h.data_bytes);
  } else {
    const void* partial = have_partial_ ? request_.out : request_.in;
    const void* sources[2] = {partial, data};
    if (round.peer < rank_) std::swap(sources[0], sources[1]);
    reduce_sources({request_.out}, sources, 2, request_.count, request_.dtype, request_.op);
  }
  have_partial_ = true;
}

// Halving's second round, after agreeing headers: this rank's reduced half to
// the peer, the peer's straight into the output. Both ranks chunk a half by
// its size alone, so no header is needed. True once both are done.
bool CheckedExchange::swap_halves() {
  if (!swap_posted_) {
    swap_posted_ = true;
    auto* out = static_cast<std::byte*>(request_.out);
    const int peer = rounds_[0].peer;
    for_each_chunk(own_.bytes, chunk_for(own_.bytes, true), [&](std::size_t at, std::size_t size) {
      swap_requests_.push_back(MPI_REQUEST_NULL);
      check_mpi(MPI_Isend(out + own_.offset + at, static_cast<int>(size), MPI_BYTE, peer, kHalfTag, comm_,
                          &swap_requests_.back()),
                "MPI_Isend (reduced half)");
    });
    for_each_chunk(other_.bytes, chunk_for(other_.bytes, true), [&](std::size_t at, std::size_t size) {
      swap_requests_.push_back(MPI_REQUEST_NULL);
      check_mpi(MPI_Irecv(out + other_.offset + at, static_cast<int>(size), MPI_BYTE, peer, kHalfTag, comm_,
                          &swap_requests_.back()),
                "MPI_Irecv (reduced half)");
    });
  }
  int done = 0;
  check_mpi(MPI_Testall(static_cast<int>(swap_requests_.size()), swap_requests_.data(), &done, MPI_STATUSES_IGNORE),
            "MPI_Testall (reduced halves)");
  return done != 0;
}

}  // namespace dagr::detail
