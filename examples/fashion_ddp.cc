// A small data-parallel trainer written as a user of dagr would: a CNN on
// Fashion-MNIST, torch's data loader fed by dagr's sampler, gradients averaged
// by dagr's DistributedDataParallel.
//
//   fashion_ddp [STEPS] [DATA_DIR]            one process
//   dagr launch -n 2 -- fashion_ddp [STEPS]   two ranks, each on its half of every batch
//
// Each rank ends by printing a hash of its parameters' bits: data-parallel
// ranks must print the same one.
#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "dagr/comm/communicator.h"
#include "dagr/data/fashion_mnist.h"
#include "dagr/error.h"
#include "dagr/torch/sampler.h"
#include "dagr/train/ddp.h"

namespace {

struct NetImpl : torch::nn::Module {
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::Linear fc{nullptr};
  torch::nn::Dropout dropout{nullptr};
  NetImpl() {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 8, 3).stride(2)));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 16, 3).stride(2)));
    fc = register_module("fc", torch::nn::Linear(16 * 6 * 6, 10));
    dropout = register_module("dropout", torch::nn::Dropout(0.1));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(conv1(x));
    x = torch::relu(conv2(x));
    return fc(dropout(x.flatten(1)));
  }
};
TORCH_MODULE(Net);

// The images and labels as a torch data set: example i is (image i, label i).
struct Images : torch::data::datasets::Dataset<Images> {
  dagr::data::ImageSet set;
  explicit Images(dagr::data::ImageSet s) : set(std::move(s)) {}
  torch::data::Example<> get(std::size_t i) override {
    const auto at = static_cast<std::int64_t>(i);
    return {set.images[at], set.labels[at]};
  }
  dagr::torch_compat::SizeOptional size() const override { return static_cast<std::size_t>(set.labels.size(0)); }
};

// FNV-1a over every parameter's bytes, in registration order.
std::uint64_t parameter_hash(torch::nn::Module& model) {
  std::uint64_t h = 1469598103934665603ull;
  for (const auto& p : model.parameters()) {
    auto t = p.detach().contiguous();
    const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
    for (std::size_t i = 0; i < static_cast<std::size_t>(t.nbytes()); ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  }
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const long steps = argc > 1 ? std::stol(argv[1]) : 200;
    const std::string dir = argc > 2 ? argv[2] : dagr::data::kFashionMnistDir;
    constexpr std::int64_t kGlobalBatch = 64;

    // The group `dagr launch` (or mpirun) started this process in; a group of
    // one without a launcher.
    dagr::Communicator comm = dagr::Communicator::from_env();
    DAGR_ENFORCE(kGlobalBatch % comm.size() == 0, dagr::InputError, "the batch of ", kGlobalBatch,
                 " does not split over ", comm.size(), " ranks");
    torch::set_num_threads(1);

    // Seeding: the initial weights come from rank 0 (DDP broadcasts them), so
    // any seed does for them; randomness that should differ between ranks
    // (dropout here) gets a seed per rank.
    torch::manual_seed(1);
    Net model;
    dagr::DistributedDataParallel ddp(model, comm);
    torch::manual_seed(1000 + comm.rank());

    Images train(dagr::data::load_image_set(dir, "train"));
    // This rank's share of each epoch, in an order all ranks agree on.
    dagr::DataLoaderSampler sampler({.dataset_size = static_cast<std::int64_t>(*train.size()),
                                     .rank = comm.rank(), .world_size = comm.size(), .seed = 7});
    auto loader = torch::data::make_data_loader(train.map(torch::data::transforms::Stack<>()), std::move(sampler),
                                                torch::data::DataLoaderOptions(kGlobalBatch / comm.size()));

    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
    long step = 0;
    double loss_sum = 0;
    while (step < steps) {
      for (auto& batch : *loader) {
        optimizer.zero_grad();
        auto loss = torch::nn::functional::cross_entropy(model->forward(batch.data), batch.target);
        loss.backward();  // gradients averaged over the ranks when this returns
        optimizer.step();
        loss_sum += loss.item<double>();
        if (++step % 50 == 0) {
          std::printf("rank %d step %ld loss %.4f\n", comm.rank(), step, loss_sum / 50);
          loss_sum = 0;
        }
        if (step == steps) break;
      }
    }
    std::printf("rank %d of %d parameters %016llx\n", comm.rank(), comm.size(),
                static_cast<unsigned long long>(parameter_hash(*model)));
    return 0;
  } catch (const dagr::Error& e) {
    std::fprintf(stderr, "fashion_ddp: %s\n", e.what());
    return 1;
  }
}
