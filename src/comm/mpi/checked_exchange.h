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
  };
  static constexpr std::size_t kInlineBytes = 8192;  // larger data follows the header in messages of its own
  // Data up to kChunkedBytes goes in chunks of kChunkBytes: each is below the
  // TCP transport's eager limit (64 KiB), so all go at once with no rendezvous
  // handshake; larger data goes as one message (MPI's large-message protocol).
  // Across a 1 Gbit/s link a swap of 0.5-2 MiB in chunks took 0.56-0.68 of
  // the time of one message (which reached half the link's rate); on the
  // unshaped veth chunks were even at 1-2 MiB and 1.2-1.5x slower from 4 MiB.
  static constexpr std::size_t kChunkBytes = 32 << 10;
  static constexpr std::size_t kChunkedBytes = 2 << 20;

 private:
  struct Round {
    int peer;
    bool send, receive;
    bool result;  // the last hand-back: the peer's data is the result, not a part
  };
  void post();
  void post_data_receives();
  void finish_round();

  Request request_;
  bool with_data_;
  MPI_Comm comm_;
  int rank_;
  std::vector<Round> rounds_;
  std::size_t round_ = 0;
  bool posted_ = false, data_receive_posted_ = false;
  bool have_partial_ = false;  // out holds this rank's partial result (else it is still in)
  Header mine_;
  std::vector<std::byte> send_buffer_, receive_buffer_;
  std::unique_ptr<std::byte[]> receive_data_;  // not inline; left uninitialised (up to 2 GiB)
  // This round's messages: [0] the header received, then the header sent and
  // the data chunks sent and received.
  std::vector<MPI_Request> requests_;
};

}  // namespace dagr::detail
