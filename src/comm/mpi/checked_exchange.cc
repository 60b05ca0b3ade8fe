#include "mpi/checked_exchange.h"

#include <algorithm>
#include <cstring>

#include "mpi/mpi_runtime.h"
#include "reduce_kernels.h"

namespace dagr::detail {
namespace {
constexpr int kHeaderTag = 1;  // a header, with its data when that is inline
constexpr int kDataTag = 2;    // data too large to go inline, right after its header

// The (offset, size) of each data message for `bytes` of data not inline.
template <class F>
void for_each_chunk(std::size_t bytes, std::size_t chunk, std::size_t chunked, F f) {
  if (bytes > chunked) return f(std::size_t{0}, bytes);
  for (std::size_t at = 0; at < bytes; at += chunk) f(at, std::min(chunk, bytes - at));
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
  receive_buffer_.resize(sizeof(Header) + kInlineBytes);
}

void CheckedExchange::post() {
  const Round& round = rounds_[round_];
  requests_.assign(1, MPI_REQUEST_NULL);
  if (round.receive)
    check_mpi(MPI_Irecv(receive_buffer_.data(), static_cast<int>(receive_buffer_.size()), MPI_BYTE, round.peer,
                        kHeaderTag, comm_, &requests_[0]),
              "MPI_Irecv (fingerprint)");
  data_receive_posted_ = !round.receive;
  if (!round.send) return;
  Header h = mine_;
  const auto* data = static_cast<const std::byte*>(have_partial_ ? request_.out : request_.in);
  h.data_bytes = with_data_ && !mine_.mismatch ? request_.bytes() : 0;
  h.inline_data = h.data_bytes <= kInlineBytes;
  send_buffer_.resize(sizeof(Header) + (h.inline_data ? h.data_bytes : 0));
  std::memcpy(send_buffer_.data(), &h, sizeof h);
  if (h.inline_data && h.data_bytes > 0) std::memcpy(send_buffer_.data() + sizeof h, data, h.data_bytes);
  requests_.push_back(MPI_REQUEST_NULL);
  check_mpi(MPI_Isend(send_buffer_.data(), static_cast<int>(send_buffer_.size()), MPI_BYTE, round.peer, kHeaderTag,
                      comm_, &requests_.back()),
            "MPI_Isend (fingerprint)");
  if (h.inline_data) return;
  // At most INT_MAX bytes in all: the backend sends no more through here.
  for_each_chunk(h.data_bytes, kChunkBytes, kChunkedBytes, [&](std::size_t at, std::size_t size) {
    requests_.push_back(MPI_REQUEST_NULL);
    check_mpi(MPI_Isend(data + at, static_cast<int>(size), MPI_BYTE, round.peer, kDataTag, comm_, &requests_.back()),
              "MPI_Isend (data)");
  });
}

// The header is in: receive the data it announces, whatever its size.
void CheckedExchange::post_data_receives() {
  data_receive_posted_ = true;
  Header h;
  std::memcpy(&h, receive_buffer_.data(), sizeof h);
  if (h.inline_data) return;
  receive_data_.reset(new std::byte[h.data_bytes]);
  for_each_chunk(h.data_bytes, kChunkBytes, kChunkedBytes, [&](std::size_t at, std::size_t size) {
    requests_.push_back(MPI_REQUEST_NULL);
    check_mpi(MPI_Irecv(receive_data_.get() + at, static_cast<int>(size), MPI_BYTE, rounds_[round_].peer, kDataTag,
                        comm_, &requests_.back()),
              "MPI_Irecv (data)");
  });
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
    check_mpi(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE),
              "MPI_Testall (fingerprint exchange)");
    if (!done) return false;
    finish_round();
    ++round_;
    posted_ = false;
  }
  if (with_data_ && !mine_.mismatch && !have_partial_ && request_.in != request_.out && request_.bytes() > 0)
    std::memcpy(request_.out, request_.in, request_.bytes());  // a group of one
  return true;
}

void CheckedExchange::finish_round() {
  const Round& round = rounds_[round_];
  if (!round.receive) return;
  Header h;
  std::memcpy(&h, receive_buffer_.data(), sizeof h);
  const void* data = h.inline_data ? static_cast<const void*>(receive_buffer_.data() + sizeof h)
                                   : static_cast<const void*>(receive_data_.get());
  const bool differs = h.mismatch != 0 || !(h.fingerprint == mine_.fingerprint) ||
                       (with_data_ && h.data_bytes != request_.bytes());
  if (differs) mine_.mismatch = 1;
  if (mine_.mismatch || !with_data_) return;
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

}  // namespace dagr::detail
