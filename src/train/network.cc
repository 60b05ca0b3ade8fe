#include "network.h"

#include "dagr/error.h"
#include "dagr/models/models.h"
#include "dagr/parallel/tensor_parallel.h"

namespace dagr::train {
namespace {

Network dense_network(torch::nn::Sequential model) {
  return {model.ptr(), [model](const torch::Tensor& x) mutable { return model->forward(x); },
          [model] { return model; }};
}

Network split_network(TensorParallelMlp tp, int hidden) {
  return {tp.ptr(), [tp](const torch::Tensor& x) mutable { return tp->forward(x); },
          [tp, hidden]() mutable {
            auto dense = models::make_model("mlp", hidden);
            tp->gather_into(dense);
            return dense;
          }};
}

void check_splittable(const std::string& model, const ParallelGroups& groups) {
  DAGR_ENFORCE(groups.tensor.size() == 1 || model == "mlp", InputError, "--tensor-parallel ", groups.tensor.size(),
               " needs --model mlp (the ", model, " has no tensor-parallel form)");
}

}  // namespace

Network make_network(const std::string& model, int hidden, const ParallelGroups& groups) {
  check_splittable(model, groups);
  if (groups.tensor.size() == 1) return dense_network(models::make_model(model, hidden));
  return split_network(TensorParallelMlp(hidden, groups.tensor), hidden);
}

Network load_network(const std::string& model, const std::string& path, const ParallelGroups& groups) {
  check_splittable(model, groups);
  auto dense = models::make_model(model, 1);  // loading adopts the checkpoint's shapes
  try {
    torch::load(dense, path);
  } catch (const c10::Error& e) {
    const std::string what = e.what();
    throw InputError(detail::concat(path, ": not a dagr ", model, " checkpoint (",
                                    what.substr(0, what.find('\n')), ")"));
  }
  const auto p = dense->parameters();
  if (model == "mlp") {
    DAGR_ENFORCE(p.size() == 4 && p[0].dim() == 2 && p[0].size(1) == 784 && p[2].dim() == 2 && p[2].size(0) == 10 &&
                     p[2].size(1) == p[0].size(0),
                 InputError, path, ": the shapes are not an MLP 784→hidden→10");
  }
  if (groups.tensor.size() == 1) return dense_network(dense);
  const int hidden = static_cast<int>(p[0].size(0));
  DAGR_ENFORCE(hidden >= groups.tensor.size(), InputError, path, ": hidden size ", hidden,
               " cannot be split over ", groups.tensor.size(), " ranks");
  TensorParallelMlp tp(hidden, groups.tensor);
  tp->load_dense(dense);
  return split_network(tp, hidden);
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
