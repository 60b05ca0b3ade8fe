#include "network.h"

#include "dagr/error.h"
#include "dagr/models/models.h"
#include "dagr/parallel/tensor_parallel.h"

namespace dagr::train {
namespace {

Network dense_network(torch::nn::Sequential model) {
  return {model.ptr(), [model](const torch::Tensor& x) mutable { return model->forward(x); },
          [model] { return model; },
          [model](torch::nn::Sequential& dense) mutable {
            torch::NoGradGuard no_grad;
            const auto to = model->parameters(), from = dense->parameters();
            const auto to_buffers = model->buffers(), from_buffers = dense->buffers();
            DAGR_ENFORCE(to.size() == from.size() && to_buffers.size() == from_buffers.size(), InputError,
                         "the dense model does not have this model's tensors");
            for (std::size_t i = 0; i < to.size(); ++i) to[i].copy_(from[i]);
            for (std::size_t i = 0; i < to_buffers.size(); ++i) to_buffers[i].copy_(from_buffers[i]);
          }};
}

Network split_network(TensorParallelMlp tp, int hidden) {
  return {tp.ptr(), [tp](const torch::Tensor& x) mutable { return tp->forward(x); },
          [tp, hidden]() mutable {
            auto dense = models::make_model("mlp", hidden);
            tp->gather_into(dense);
            return dense;
          },
          [tp](torch::nn::Sequential& dense) mutable { tp->load_dense(dense); }};
}

void check_splittable(const std::string& model, const ParallelGroups& groups) {
  DAGR_ENFORCE(groups.tensor.size() == 1 || model == "mlp", InputError, "--tensor-parallel ", groups.tensor.size(),
               " needs --model mlp (the ", model, " has no tensor-parallel form)");
}

}  // namespace

Network make_network(const std::string& model, int hidden, int depth, const ParallelGroups& groups) {
  check_splittable(model, groups);
  if (groups.tensor.size() == 1) return dense_network(models::make_model(model, hidden, depth));
  return split_network(TensorParallelMlp(hidden, groups.tensor), hidden);
}

torch::nn::Sequential load_dense_model(const std::string& model, int depth, const std::string& path) {
  // Loading adopts the checkpoint's shapes, not its layer count: a module
  // reads only the layers it has, so a deeper checkpoint's extra layers
  // would be ignored without the count below.
  auto dense = models::make_model(model, 1, depth);
  const std::string what_model =
      detail::concat(model, model == "deep-mlp" ? detail::concat(" (--depth ", depth, ")") : std::string());
  std::size_t layers = 0;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    layers = archive.keys().size();
    dense->load(archive);
  } catch (const c10::Error& e) {
    const std::string what = e.what();
    throw InputError(detail::concat(path, ": not a dagr ", what_model, " checkpoint (",
                                    what.substr(0, what.find('\n')), ")"));
  }
  DAGR_ENFORCE(layers == dense->size(), InputError, path, ": not a dagr ", what_model, " checkpoint (", layers,
               " layers, not ", dense->size(), ")");
  const auto p = dense->parameters();
  if (model == "mlp") {
    DAGR_ENFORCE(p.size() == 4 && p[0].dim() == 2 && p[0].size(1) == 784 && p[2].dim() == 2 && p[2].size(0) == 10 &&
                     p[2].size(1) == p[0].size(0),
                 InputError, path, ": the shapes are not an MLP 784→hidden→10");
  }
  return dense;
}

Network load_network(const std::string& model, int depth, const std::string& path, const ParallelGroups& groups) {
  check_splittable(model, groups);
  auto dense = load_dense_model(model, depth, path);
  const auto p = dense->parameters();
  if (groups.tensor.size() == 1) return dense_network(dense);
  const int hidden = static_cast<int>(p[0].size(0));
  DAGR_ENFORCE(hidden >= groups.tensor.size(), InputError, path, ": hidden size ", hidden,
               " cannot be split over ", groups.tensor.size(), " ranks");
  TensorParallelMlp tp(hidden, groups.tensor);
  tp->load_dense(dense);
  return split_network(tp, hidden);
}

std::vector<torch::Tensor> gather_like_parameters(Network& net, const std::vector<torch::Tensor>& shards) {
  torch::NoGradGuard no_grad;
  auto params = net.module->parameters();
  DAGR_ENFORCE(shards.size() == params.size(), Error, "gather_like_parameters: ", shards.size(), " tensors for ",
               params.size(), " parameters");
  std::vector<torch::Tensor> saved, out;
  for (std::size_t i = 0; i < params.size(); ++i) {
    saved.push_back(params[i].clone());
    params[i].copy_(shards[i]);
  }
  for (const auto& p : net.dense()->parameters()) out.push_back(p.clone());  // a dense net returns itself: clone
  for (std::size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
  return out;
}

std::vector<torch::Tensor> shard_like_parameters(Network& net, const std::vector<torch::Tensor>& dense) {
  torch::NoGradGuard no_grad;
  auto params = net.module->parameters();
  std::vector<torch::Tensor> saved, out;
  for (const auto& p : params) saved.push_back(p.clone());
  auto carrier = net.dense();  // collective; its shapes are the dense model's
  auto carrier_params = carrier->parameters();
  DAGR_ENFORCE(dense.size() == carrier_params.size(), Error, "shard_like_parameters: ", dense.size(),
               " tensors for ", carrier_params.size(), " dense parameters");
  if (carrier.ptr() == net.module) {  // the dense model itself: nothing to split
    for (const auto& t : dense) out.push_back(t.clone());
    return out;
  }
  for (std::size_t i = 0; i < dense.size(); ++i) carrier_params[i].copy_(dense[i]);
  net.load_dense(carrier);
  for (const auto& p : params) out.push_back(p.clone());
  for (std::size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
  return out;
}

double evaluate(Network& net, const torch::Tensor& images, const torch::Tensor& labels, const ParallelGroups& groups,
                Communicator& world) {
  torch::NoGradGuard no_grad;
  net.module->eval();
  const auto idx = torch::arange(groups.data.rank(), images.size(0), groups.data.size());
  std::int64_t counts[2] = {0, 0};
  for (std::int64_t i = 0; i < idx.numel(); i += 1000) {
    const auto part = idx.narrow(0, i, std::min<std::int64_t>(1000, idx.numel() - i));
    const auto correct = net.forward(images.index_select(0, part)).argmax(1).eq(labels.index_select(0, part)).sum();
    if (groups.tensor.rank() == 0) {  // the tensor group's ranks all computed the same answer
      counts[0] += correct.item<std::int64_t>();
      counts[1] += part.numel();
    }
  }
  net.module->train();
  world.allreduce(std::span<std::int64_t>(counts, 2));
  return static_cast<double>(counts[0]) / static_cast<double>(counts[1]);
}

}  // namespace dagr::train
