#include "dagr/models/max_pool.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace dagr::nn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A 2 × 2 window's winner is numbered by its place in the window: 0, 1 in
// the upper row, 2, 3 in the lower. libtorch scans a window in that order, the
// first element the maximum so far, a later one taking over if it is greater
// or NaN (v != v): the winner is the last NaN if there is one, else the first
// of the maxima. Any split of the window can be scanned part by part and the
// parts' winners then compared by that rule (a NaN beats a number, the later
// of two NaNs wins; else the greater number, the earlier on a tie), and the
// loops below do so in two passes along the plane:
//
//   vertical:   each element against the one below it (the lower is the
//               later, so it takes over if greater or NaN), for every row
//               but the last: the even rows' results are the windows' columns;
//   horizontal: each pair of neighbours of those results, (2j, 2j + 1) for
//               every j, by the full rule: window (oh, ow)'s winner is pair
//               oh·W + ow (an even row starts at an even place, whatever W).
//
// Both are plain loops over a whole block of rows, which vectorise (the
// windows of one output row are too few: 13 in the CNN's first pooling, 5 in
// its second). They do twice the comparisons needed, for the odd rows and the
// pairs across them, and still take under 1 ns a window where libtorch's take
// about 20. GCC's target_clones compile them for AVX-512, AVX2 and plain
// x86-64; the winners' places are integers as wide as T, so the loops keep one
// vector width.
#define DAGR_POOL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

template <class T>
using SameWidthInt = std::conditional_t<sizeof(T) == 8, std::int64_t, std::int32_t>;

// column[i], place[i]: the winner of x[i] (place 0) and x[i + W] (place 2).
template <class T>
DAGR_POOL_CLONES void vertical(const T* __restrict x, int64_t n, int64_t W, T* __restrict column,
                               SameWidthInt<T>* __restrict place) {
  for (int64_t i = 0; i < n; ++i) {
    const T up = x[i], down = x[i + W];
    const bool lower = (down > up) | (down != down);
    column[i] = lower ? down : up;
    place[i] = lower ? 2 : 0;
  }
}

// best[j], at[j]: the winner of column[2j] (its place) and column[2j + 1]
// (its place + 1).
template <class T>
DAGR_POOL_CLONES void horizontal(const T* __restrict column, const SameWidthInt<T>* __restrict place, int64_t n,
                                 T* __restrict best, SameWidthInt<T>* __restrict at) {
  using I = SameWidthInt<T>;
  for (int64_t j = 0; j < n; ++j) {
    const T left = column[2 * j], right = column[2 * j + 1];
    const I left_at = place[2 * j], right_at = place[2 * j + 1] + 1;
    const I nan_left = left != left, nan_right = right != right;  // as integers, for the loop to vectorise
    const I takes = (nan_right & (!nan_left | (right_at > left_at))) |
                    (!nan_right & !nan_left & ((right > left) | ((right == left) & (right_at < left_at))));
    best[j] = takes ? right : left;
    at[j] = takes ? right_at : left_at;
  }
}

// Scratch for the two passes over a block of `rows` output rows.
template <class T>
struct PoolScratch {
  int64_t rows;  // output rows a block: 2 × rows input rows, about 2 048 elements
  std::vector<T> column, best;
  std::vector<SameWidthInt<T>> place, at;
  PoolScratch(int64_t H, int64_t W)
      : rows(std::clamp<int64_t>(2048 / (2 * W), 1, H / 2)),
        column(2 * rows * W),
        best(rows * W),
        place(2 * rows * W),
        at(rows * W) {}
};

// A plane (H × W, row-major) pooled into OH × OW maxima and their winners'
// places, a block of output rows at a time.
template <class T>
void pool_plane(const T* in, int64_t H, int64_t W, PoolScratch<T>& s, T* out, std::uint8_t* which) {
  const int64_t OH = H / 2, OW = W / 2;
  for (int64_t oh0 = 0; oh0 < OH; oh0 += s.rows) {
    const int64_t block = std::min(s.rows, OH - oh0), n = (2 * block - 1) * W;
    vertical(in + 2 * oh0 * W, n, W, s.column.data(), s.place.data());
    horizontal(s.column.data(), s.place.data(), n / 2, s.best.data(), s.at.data());
    for (int64_t r = 0; r < block; ++r)
      for (int64_t w = 0; w < OW; ++w) {
        out[(oh0 + r) * OW + w] = s.best[r * W + w];
        which[(oh0 + r) * OW + w] = static_cast<std::uint8_t>(s.at[r * W + w]);
      }
  }
}

// A plane's input gradient (H × W) from its output gradient and winners, as
// libtorch computes it: zeros, and each window's gradient added at its winner
// (0 + g, which turns a −0 into +0).
template <class T>
void unpool_plane(const T* grad, const std::uint8_t* which, int64_t H, int64_t W, T* grad_in) {
  const int64_t OH = H / 2, OW = W / 2;
  const int64_t offset[4] = {0, 1, W, W + 1};
  std::fill(grad_in, grad_in + H * W, T(0));
  for (int64_t oh = 0; oh < OH; ++oh)
    for (int64_t w = 0; w < OW; ++w)
      grad_in[2 * oh * W + 2 * w + offset[which[oh * OW + w]]] += grad[oh * OW + w];
}

// Whether dagr's loops take this input: see the header. Plain memory only: a
// strided, row-major (NCHW, also as torch suggests the layout: a 1-channel
// NHWC batch is contiguous both ways, and torch keeps it NHWC), unnamed tensor
// with its values in its storage (no negative or zero view) and no
// forward-mode tangent; anything else is torch's to pool.
bool tiles(const torch::Tensor& input) {
  if (!input.defined() || input.layout() != torch::kStrided || !input.device().is_cpu()) return false;
  const auto dim = input.dim();
  return (input.scalar_type() == torch::kFloat || input.scalar_type() == torch::kDouble) && (dim == 3 || dim == 4) &&
         input.numel() > 0 && input.is_contiguous() &&
         input.suggest_memory_format() == at::MemoryFormat::Contiguous && input.size(-2) >= 2 &&
         input.size(-1) >= 2 && !input.has_names() && !input.is_neg() && !input._is_zerotensor() &&
         !input._fw_grad(/*level=*/0).defined();
}

int64_t planes(const torch::Tensor& t) { return t.dim() == 4 ? t.size(0) * t.size(1) : t.size(0); }

// The maxima of every plane and their winners, over the planes in parallel
// (on libtorch's compute threads).
void pool(const torch::Tensor& input, torch::Tensor& out, torch::Tensor& which) {
  const int64_t H = input.size(-2), W = input.size(-1), OH = H / 2, OW = W / 2;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dagr::nn::max_pool2d", [&] {
    const scalar_t* in = input.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    std::uint8_t* k = which.data_ptr<std::uint8_t>();
    at::parallel_for(0, planes(input), 16, [&](int64_t begin, int64_t end) {
      PoolScratch<scalar_t> scratch(H, W);
      for (int64_t p = begin; p < end; ++p)
        pool_plane(in + p * H * W, H, W, scratch, o + p * OH * OW, k + p * OH * OW);
    });
  });
}

torch::Tensor unpool(const torch::Tensor& grad, const torch::Tensor& which, const torch::Tensor& input) {
  const int64_t H = input.size(-2), W = input.size(-1), OH = H / 2, OW = W / 2;
  auto grad_in = at::empty_like(input, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dagr::nn::max_pool2d_backward", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const std::uint8_t* k = which.data_ptr<std::uint8_t>();
    scalar_t* gi = grad_in.data_ptr<scalar_t>();
    at::parallel_for(0, planes(input), 16, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) unpool_plane(g + p * OH * OW, k + p * OH * OW, H, W, gi + p * H * W);
    });
  });
  return grad_in;
}

// torch's int64 indices (the winner's place in its plane, y·W + x) from the
// winners' places in their windows: for backward under create_graph.
torch::Tensor plane_indices(const torch::Tensor& which, int64_t W) {
  const auto k = which.to(torch::kLong);
  const int64_t OH = which.size(-2), OW = which.size(-1);
  const auto oh = torch::arange(OH, torch::kLong).view({OH, 1}), ow = torch::arange(OW, torch::kLong).view({1, OW});
  return (oh * 2 + k.div(2, "floor")) * W + ow * 2 + k.remainder(2);
}

torch::Tensor empty_output(const torch::Tensor& input, torch::ScalarType type) {
  auto shape = input.sizes().vec();
  shape[shape.size() - 2] /= 2;
  shape[shape.size() - 1] /= 2;
  return at::empty(shape, input.options().dtype(type));
}

struct MaxPoolFunction : torch::autograd::Function<MaxPoolFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input) {
    auto out = empty_output(input, input.scalar_type());
    auto which = empty_output(input, torch::kByte);
    pool(input, out, which);
    ctx->save_for_backward({input, which});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &input = saved[0], &which = saved[1];
    if (grads[0]._is_zerotensor()) return {at::zeros_like(input)};  // as from sgn(): no storage to read
    const auto grad = grads[0].contiguous();
    if (torch::GradMode::is_enabled())  // create_graph: a backward autograd can differentiate again
      return {at::max_pool2d_with_indices_backward(grad, input, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false,
                                                    plane_indices(which, input.size(-1)))};
    return {unpool(grad, which, input)};
  }
};

bool two_by_two(const torch::nn::MaxPool2dOptions& o) {
  const auto k = *o.kernel_size(), s = *o.stride(), p = *o.padding(), d = *o.dilation();
  return k[0] == 2 && k[1] == 2 && s == k && p[0] == 0 && p[1] == 0 && d[0] == 1 && d[1] == 1 && !o.ceil_mode();
}

}  // namespace

torch::Tensor max_pool2d(const torch::Tensor& input, const torch::nn::MaxPool2dOptions& options) {
  if (!two_by_two(options) || !tiles(input))
    return torch::nn::functional::max_pool2d(input, torch::nn::functional::MaxPool2dFuncOptions(options));
  if (torch::GradMode::is_enabled() && input.requires_grad()) return MaxPoolFunction::apply(input);
  auto out = empty_output(input, input.scalar_type()), which = empty_output(input, torch::kByte);
  pool(input, out, which);
  return out;
}

torch::Tensor MaxPool2dImpl::forward(const torch::Tensor& input) { return max_pool2d(input, options); }

std::shared_ptr<torch::nn::Module> MaxPool2dImpl::clone(const c10::optional<torch::Device>&) const {
  auto copy = std::make_shared<MaxPool2dImpl>(options);
  copy->train(is_training());
  return copy;
}

}  // namespace dagr::nn
