// The fingerprint check of the MPI backend, and with it the whole of a small
// allreduce, in one recursive-doubling exchange of point-to-point messages.
//
// Every message carries a header: the sender's fingerprint, whether the sender
// has already seen a difference, and the size of the data that follows. The
// pattern of messages depends only on the group's size and the rank — never on
// what was called — and a receiver takes whatever size the header announces
// (inline data fits a buffer of fixed size; larger data follows in messages
// whose sizes follow from the announced size). So the exchange completes whatever the ranks
// called, with no truncation and no hang, and every rank learns whether all
// fingerprints agreed: a rank's header is unflagged only while every fingerprint
// it has merged equals its own.
//
//   N a power of two: log2 N rounds, in round k rank r swaps with r ^ 2^k.
//   Otherwise, with P the largest power of two below N, rank P + i first hands
//   its part to rank i, the first P ranks run the rounds, and rank i hands the
//   result back to rank P + i.
//
// With data (allreduce), each round also reduces the partner's partial result
// into the output (lower ranks' block first, so every rank gets the same bits);
// once a difference is seen, no more data is sent. Without data it is the check
// alone, after which the caller runs MPI's collective, knowing every rank called
// the same one. One exchange is one message latency per round: for two ranks a
// checked allreduce costs one round trip, as MPI_Allreduce itself does.
//
// Two ranks, kHalvingBytes of data or more: halving. Rank 0 owns the first
// half of the elements, rank 1 the rest. The one round sends the peer's half
// of this rank's input (not the whole), and each chunk of the peer's part of
// this rank's half is reduced as it arrives (while the next is on the wire);
// then, only where the headers agreed, a second round swaps the reduced
// halves, received straight into the output. As many bytes cross the link as
// in one swap of the whole, but each rank reduces half, overlapped with the
// transfer, and needs a receive buffer of half the size: what MPI's own
// large-message allreduce does. Whether the second round happens is decided by
// the first round's headers, which both ranks see alike (with two ranks a
// difference is seen by both), so it never waits for a message not sent.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "request.h"

namespace dagr::detail {

class CheckedExchange {
 public:
  // `in`/`out`/`count`/`dtype`/`op` are r's; with_data: reduce r.in into r.out
  // (op sum for avg: the caller divides). `comm` is used for nothing else.
  CheckedExchange(const Request& r, bool with_data, MPI_Comm comm, int rank, int size);
  // Posts and tests; true once the exchange is complete. Called under the MPI lock.
  bool step();
  // After completion: whether every rank's fingerprint equals this rank's.
  bool agreed() const { return !mine_.mismatch; }

  struct Header {
    Fingerprint fingerprint;
    std::uint32_t mismatch = 0;  // the sender has seen a difference
    std::uint32_t inline_data = 0;  // the data follows the header in this message
    std::uint64_t data_bytes = 0;   // bytes of data sent (0: none)
    std::uint64_t chunk_bytes = 0;  // data not inline comes in messages of this size (the last one shorter)
  };
  static constexpr std::size_t kInlineBytes = 8192;  // larger data follows the header in messages of its own
  // Data up to kChunkedBytes goes in chunks of kChunkBytes: each is below the
  // TCP transport's eager limit (64 KiB), so all go at once with no rendezvous
  // handshake; larger data goes as one message (MPI's large-message protocol).
  // Across a 1 Gbit/s link a swap of 0.5-2 MiB in chunks took 0.56-0.68 of
  // the time of one message (which reached half the link's rate); on the
  // unshaped veth chunks were even at 1-2 MiB and 1.2-1.5x slower from 4 MiB.
  // The receiver takes the chunk size from the header, not from this rule.
  static constexpr std::size_t kChunkBytes = 32 << 10;
  static constexpr std::size_t kChunkedBytes = 2 << 20;
  // Halving (two ranks) from this size; its halves above kChunkedBytes go in
  // chunks of kHalvingChunkBytes, so the reduction still overlaps the transfer.
  static constexpr std::size_t kHalvingBytes = 256 << 10;
  static constexpr std::size_t kHalvingChunkBytes = 1 << 20;

 private:
  struct Round {
    int peer;
    bool send, receive;
    bool result;  // the last hand-back: the peer's data is the result, not a part
  };
  struct Range {
    std::size_t offset, bytes;  // into in/out
  };
  void post();
  void post_data_receives();
  bool receive_chunks();
  void finish_round();
  bool swap_halves();

  Request request_;
  bool with_data_;
  MPI_Comm comm_;
  int rank_;
  std::vector<Round> rounds_;
  std::size_t round_ = 0;
  bool posted_ = false, data_receive_posted_ = false;
  bool have_partial_ = false;  // out holds this rank's partial result (else it is still in)
  Header mine_;
  // A header and its inline data, sent and received. Left uninitialised: the
  // bytes sent are written first, the bytes read were received.
  static constexpr std::size_t kMessageBytes = sizeof(Header) + kInlineBytes;
  alignas(Header) std::byte send_buffer_[kMessageBytes], receive_buffer_[kMessageBytes];
  std::unique_ptr<std::byte[]> receive_data_;  // not inline; left uninitialised (up to 2 GiB)
  // This round's messages: [0] the header received, then the header sent and
  // the data chunks sent.
  std::vector<MPI_Request> requests_;
  // The data chunks received, in order (each chunk_bytes_ but the last), and
  // how many are in.
  std::vector<MPI_Request> chunk_requests_;
  std::size_t chunk_bytes_ = 0;
  std::size_t chunks_in_ = 0;
  bool header_agreed_ = false;  // this round's header matched (set when it is in)
  // Halving: this rank's half and the peer's, and the second round's messages
  // (empty until it is posted).
  bool halving_ = false;
  Range own_{}, other_{};
  std::vector<MPI_Request> swap_requests_;
  bool swap_posted_ = false;
};

}  // namespace dagr::detail
