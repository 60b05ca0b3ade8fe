// Collectives and point-to-point messages on torch::Tensor, as
// torch.distributed's take tensors:
//
//   dagr::allreduce(comm, grad, dagr::ReduceOp::avg);
//   dagr::broadcast(comm, weights, /*root=*/0);
//
// Each call checks its tensors (include/dagr/torch/tensor.h: contiguous CPU,
// a dtype dagr moves; InputError otherwise), then is the Communicator call of
// the same name on their elements, with the same contract: every rank calls
// the same collectives in the same order with the same dtype and element
// count. In place: `t` is read and overwritten. Out of place: `in` and `out`
// must share one dtype. An async call's tensors must stay alive, and unread
// and unwritten by the caller, until its Work is waited for.
#pragma once

#include <torch/torch.h>

#include "dagr/comm/communicator.h"
#include "dagr/torch/tensor.h"

namespace dagr {

void allreduce(Communicator& comm, const torch::Tensor& t, ReduceOp op = ReduceOp::sum, CallOptions o = {});
Work allreduce_async(Communicator& comm, const torch::Tensor& t, ReduceOp op = ReduceOp::sum, CallOptions o = {});
// The result lands on `root` only.
void reduce(Communicator& comm, const torch::Tensor& t, int root, ReduceOp op = ReduceOp::sum, CallOptions o = {});
void broadcast(Communicator& comm, const torch::Tensor& t, int root, CallOptions o = {});
Work broadcast_async(Communicator& comm, const torch::Tensor& t, int root, CallOptions o = {});
// out holds comm.size() blocks of in.numel() elements: block r is rank r's `in`.
void allgather(Communicator& comm, const torch::Tensor& in, const torch::Tensor& out, CallOptions o = {});
// in holds comm.size() blocks of out.numel() elements; out = the reduction of everyone's block rank().
void reduce_scatter(Communicator& comm, const torch::Tensor& in, const torch::Tensor& out,
                    ReduceOp op = ReduceOp::sum, CallOptions o = {});
void send(Communicator& comm, const torch::Tensor& t, int peer, int tag = 0, CallOptions o = {});
void recv(Communicator& comm, const torch::Tensor& t, int peer, int tag = 0, CallOptions o = {});

}  // namespace dagr
