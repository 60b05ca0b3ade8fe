#include "dagr/train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <variant>

#include "dagr/error.h"
#include "dagr/torch/compat.h"
#include "dagr/train/zero_optimizer.h"

namespace dagr {
namespace {

namespace fs = std::filesystem;

constexpr char kMagic[8] = {'D', 'A', 'G', 'R', 'C', 'K', 'P', 'T'};
constexpr std::uint32_t kVersion = 1;
constexpr std::size_t kHeaderBytes = 8 + 4 + 4 + 8;
constexpr const char* kPrefix = "checkpoint-";
constexpr const char* kSuffix = ".dagr";

std::uint32_t crc_of(const std::uint8_t* data, std::size_t size) {
  uLong crc = crc32(0L, Z_NULL, 0);
  while (size > 0) {  // zlib takes uInt lengths
    const uInt part = static_cast<uInt>(std::min<std::size_t>(size, 1u << 30));
    crc = crc32(crc, data, part);
    data += part;
    size -= part;
  }
  return static_cast<std::uint32_t>(crc);
}

// The checkpoint files in `dir`, oldest first (the names sort by position);
// anything else named like one (a folder) is neither read nor removed.
std::vector<fs::path> checkpoint_files(const std::string& dir) {
  std::vector<fs::path> files;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    std::error_code type_error;
    if (name.starts_with(kPrefix) && name.ends_with(kSuffix) && entry.is_regular_file(type_error))
      files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

void write_all(int fd, const void* data, std::size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    DAGR_ENFORCE(n > 0, Error, "cannot write ", path, ": ", std::strerror(errno));
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  DAGR_ENFORCE(fd >= 0, Error, "cannot open ", path, ": ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  DAGR_ENFORCE(rc == 0, Error, "cannot fsync ", path, ": ", std::strerror(saved));
}

}  // namespace

std::vector<std::uint8_t> encode_checkpoint(const TrainingCheckpoint& c) {
  torch::serialize::OutputArchive archive;
  const nlohmann::json meta{{"epoch", c.epoch},       {"samples_in_epoch", c.samples_in_epoch},
                            {"steps", c.steps},       {"sampler_seed", c.sampler_seed},
                            {"metrics", c.metrics},   {"extra", c.extra}};
  archive.write("meta", c10::IValue(meta.dump()));
  if (c.rng_state.defined()) archive.write("rng_state", c.rng_state);
  for (const auto& [name, t] : c.model) archive.write("model/" + name, t);
  for (const auto& [name, t] : c.optimizer) archive.write("optimizer/" + name, t);
  for (const auto& [name, t] : c.comm_hook) archive.write("comm_hook/" + name, t);
  std::ostringstream out;
  archive.save_to(out);
  const std::string bytes = out.str();
  return {bytes.begin(), bytes.end()};
}

namespace {

// The payload of `path` when the file is whole; otherwise why not.
std::variant<std::vector<std::uint8_t>, std::string> read_payload(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::string("cannot open it");
  std::vector<std::uint8_t> file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (file.size() < kHeaderBytes || std::memcmp(file.data(), kMagic, 8) != 0)
    return std::string("not a dagr checkpoint (no header)");
  std::uint32_t version, crc;
  std::uint64_t length;
  std::memcpy(&version, file.data() + 8, 4);
  std::memcpy(&crc, file.data() + 12, 4);
  std::memcpy(&length, file.data() + 16, 8);
  if (version != kVersion) return "format version " + std::to_string(version) + ", not " + std::to_string(kVersion);
  if (file.size() - kHeaderBytes != length)
    return "torn: " + std::to_string(file.size() - kHeaderBytes) + " payload bytes of " + std::to_string(length);
  if (crc_of(file.data() + kHeaderBytes, length) != crc) return std::string("checksum mismatch");
  return std::vector<std::uint8_t>(file.begin() + kHeaderBytes, file.end());
}

void warn(const fs::path& path, const std::string& why) {
  std::fprintf(stderr, "dagr: warning: skipping checkpoint %s: %s; using the one before\n", path.c_str(), why.c_str());
}

}  // namespace

std::string write_checkpoint(const std::string& dir, const TrainingCheckpoint& c) {
  char name[64];
  std::snprintf(name, sizeof name, "%s%06lld-%012lld%s", kPrefix, static_cast<long long>(c.epoch),
                static_cast<long long>(c.samples_in_epoch), kSuffix);
  const std::string path = (fs::path(dir) / name).string(), tmp = path + ".tmp";
  const std::vector<std::uint8_t> payload = encode_checkpoint(c);
  char header[kHeaderBytes];
  const std::uint32_t crc = crc_of(payload.data(), payload.size());
  const std::uint64_t length = payload.size();
  std::memcpy(header, kMagic, 8);
  std::memcpy(header + 8, &kVersion, 4);
  std::memcpy(header + 12, &crc, 4);
  std::memcpy(header + 16, &length, 8);

  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DAGR_ENFORCE(fd >= 0, Error, "cannot create ", tmp, ": ", std::strerror(errno));
  try {
    write_all(fd, header, sizeof header, tmp);
    write_all(fd, payload.data(), payload.size(), tmp);
    DAGR_ENFORCE(::fsync(fd) == 0, Error, "cannot fsync ", tmp, ": ", std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  fs::rename(tmp, path);
  fsync_path(dir, O_RDONLY | O_DIRECTORY);

  // Keep this one and the one before it. Any named after this one belong to
  // a timeline the run went back from, which --resume does only past
  // unreadable ones: counted among the two, they would push out the last good
  // one. A .tmp left by a writer that died is removed too.
  auto files = checkpoint_files(dir);  // in name order: oldest first
  if (const auto mine = std::find(files.begin(), files.end(), fs::path(path)); mine != files.end()) {
    for (auto later = mine + 1; later != files.end(); ++later) fs::remove(*later);
    files.erase(mine + 1, files.end());
  }
  for (std::size_t i = 0; i + 2 < files.size(); ++i) fs::remove(files[i]);
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    const std::string n = entry.path().filename().string();
    if (n.starts_with(kPrefix) && n.ends_with(std::string(kSuffix) + ".tmp")) fs::remove(entry.path(), error);
  }
  return path;
}

std::optional<CheckpointBytes> read_latest_checkpoint_bytes(const std::string& dir) {
  auto files = checkpoint_files(dir);
  for (auto it = files.rbegin(); it != files.rend(); ++it) {
    auto result = read_payload(*it);
    if (auto* why = std::get_if<std::string>(&result)) {
      warn(*it, *why);
      continue;
    }
    return CheckpointBytes{it->string(), std::move(std::get<std::vector<std::uint8_t>>(result))};
  }
  return std::nullopt;
}

TrainingCheckpoint decode_checkpoint(const std::vector<std::uint8_t>& payload, const std::string& name) {
  TrainingCheckpoint c;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(reinterpret_cast<const char*>(payload.data()), payload.size());
    c10::IValue meta_value;
    archive.read("meta", meta_value);
    const auto meta = nlohmann::json::parse(meta_value.toStringRef());
    c.epoch = meta.at("epoch");
    c.samples_in_epoch = meta.at("samples_in_epoch");
    c.steps = meta.at("steps");
    c.sampler_seed = meta.at("sampler_seed");
    c.metrics = meta.at("metrics").get<std::vector<std::string>>();
    c.extra = meta.at("extra").get<std::string>();
    for (const std::string& key : archive.keys()) {
      torch::Tensor t;
      if (key == "rng_state") {
        archive.read(key, t);
        c.rng_state = t;
      } else if (key.starts_with("model/")) {
        archive.read(key, t);
        c.model[key.substr(6)] = t;
      } else if (key.starts_with("optimizer/")) {
        archive.read(key, t);
        c.optimizer[key.substr(10)] = t;
      } else if (key.starts_with("comm_hook/")) {
        archive.read(key, t);
        c.comm_hook[key.substr(10)] = t;
      }
    }
  } catch (const std::exception& e) {
    const std::string what = e.what();
    throw InputError(detail::concat(name, ": not a readable dagr checkpoint (", what.substr(0, what.find('\n')), ")"));
  }
  return c;
}

std::optional<TrainingCheckpoint> read_latest_checkpoint(const std::string& dir) {
  auto bytes = read_latest_checkpoint_bytes(dir);
  if (!bytes) return std::nullopt;
  return decode_checkpoint(bytes->payload, bytes->path);
}

void remove_checkpoints(const std::string& dir) {
  for (const auto& file : checkpoint_files(dir)) fs::remove(file);
}

std::map<std::string, torch::Tensor> module_state(const torch::nn::Module& module) {
  std::map<std::string, torch::Tensor> state;
  for (const auto& item : module.named_parameters()) state[item.key()] = item.value().detach().clone();
  for (const auto& item : module.named_buffers()) state[item.key()] = item.value().detach().clone();
  return state;
}

void load_module_state(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& state) {
  torch::NoGradGuard no_grad;
  auto load = [&](const torch::OrderedDict<std::string, torch::Tensor>& tensors) {
    for (const auto& item : tensors) {
      const auto it = state.find(item.key());
      DAGR_ENFORCE(it != state.end(), InputError, "the checkpoint has no tensor ", item.key());
      DAGR_ENFORCE(it->second.sizes() == item.value().sizes(), InputError, "the checkpoint's ", item.key(), " is ",
                   it->second.sizes(), ", the model's ", item.value().sizes());
      item.value().copy_(it->second);
    }
  };
  load(module.named_parameters());
  load(module.named_buffers());
}

namespace {
using ParamState = torch::optim::OptimizerParamState;
}  // namespace

std::map<std::string, torch::Tensor> optimizer_state(torch::optim::Optimizer& optimizer,
                                                     const torch::OrderedDict<std::string, torch::Tensor>& params) {
  if (auto* zero = dynamic_cast<ZeroOptimizer*>(&optimizer)) return zero->dense_state(params);
  const bool sgd = dynamic_cast<torch::optim::SGD*>(&optimizer) != nullptr;
  const bool adam = dynamic_cast<torch::optim::Adam*>(&optimizer) != nullptr;
  DAGR_ENFORCE(sgd || adam, InputError, "checkpoints hold the state of SGD and Adam only");
  std::map<std::string, torch::Tensor> out;
  for (std::size_t g = 0; g < optimizer.param_groups().size(); ++g)
    out["group" + std::to_string(g) + "/lr"] = torch::tensor(optimizer.param_groups()[g].options().get_lr(), torch::kFloat64);
  auto& state = optimizer.state();
  for (const auto& item : params) {
    const auto it = state.find(torch_compat::optimizer_state_key(item.value()));
    if (it == state.end()) continue;  // no step taken yet
    const std::string& name = item.key();
    if (sgd) {
      const auto& s = static_cast<const torch::optim::SGDParamState&>(*it->second);
      if (s.momentum_buffer().defined()) out[name + "/momentum_buffer"] = s.momentum_buffer().clone();
    } else {
      const auto& s = static_cast<const torch::optim::AdamParamState&>(*it->second);
      out[name + "/step"] = torch::tensor(s.step(), torch::kInt64);
      out[name + "/exp_avg"] = s.exp_avg().clone();
      out[name + "/exp_avg_sq"] = s.exp_avg_sq().clone();
      if (s.max_exp_avg_sq().defined()) out[name + "/max_exp_avg_sq"] = s.max_exp_avg_sq().clone();
    }
  }
  return out;
}

void check_optimizer_state_kind(const std::map<std::string, torch::Tensor>& state, const std::string& optimizer) {
  const auto holds = [&](std::string_view suffix) {
    return std::any_of(state.begin(), state.end(), [&](const auto& kv) { return kv.first.ends_with(suffix); });
  };
  const char* held = holds("/exp_avg") ? "Adam" : holds("/momentum_buffer") ? "SGD" : nullptr;
  DAGR_ENFORCE(held == nullptr || optimizer == held, InputError, "the checkpoint holds ", held,
               "'s optimizer state and this run's optimizer is ", optimizer,
               ": loading would drop that state (resume with the optimizer that wrote it)");
}

void load_optimizer_state(torch::optim::Optimizer& optimizer,
                          const torch::OrderedDict<std::string, torch::Tensor>& params,
                          const std::map<std::string, torch::Tensor>& in) {
  if (auto* zero = dynamic_cast<ZeroOptimizer*>(&optimizer)) return zero->load_dense_state(params, in);
  const bool sgd = dynamic_cast<torch::optim::SGD*>(&optimizer) != nullptr;
  const bool adam = dynamic_cast<torch::optim::Adam*>(&optimizer) != nullptr;
  DAGR_ENFORCE(sgd || adam, InputError, "checkpoints hold the state of SGD and Adam only");
  check_optimizer_state_kind(in, sgd ? "SGD" : "Adam");
  const auto get = [&](const std::string& key, const torch::Tensor& like) -> torch::Tensor {
    const auto it = in.find(key);
    if (it == in.end()) return {};
    DAGR_ENFORCE(!like.defined() || it->second.sizes() == like.sizes(), InputError, "the checkpoint's optimizer state ",
                 key, " is ", it->second.sizes(), ", the parameter's ", like.sizes());
    return it->second.clone();
  };
  for (std::size_t g = 0; g < optimizer.param_groups().size(); ++g)
    if (auto lr = get("group" + std::to_string(g) + "/lr", {}); lr.defined())
      optimizer.param_groups()[g].options().set_lr(lr.item<double>());
  auto& state = optimizer.state();
  for (const auto& item : params) {
    const std::string& name = item.key();
    const torch::Tensor& p = item.value();
    if (sgd) {
      auto buffer = get(name + "/momentum_buffer", p);
      if (!buffer.defined()) continue;
      auto s = std::make_unique<torch::optim::SGDParamState>();
      s->momentum_buffer(buffer);
      state[torch_compat::optimizer_state_key(p)] = std::move(s);
    } else {
      auto step = get(name + "/step", {});
      if (!step.defined()) continue;
      auto s = std::make_unique<torch::optim::AdamParamState>();
      s->step(step.item<std::int64_t>());
      s->exp_avg(get(name + "/exp_avg", p));
      s->exp_avg_sq(get(name + "/exp_avg_sq", p));
      s->max_exp_avg_sq(get(name + "/max_exp_avg_sq", p));
      DAGR_ENFORCE(s->exp_avg().defined() && s->exp_avg_sq().defined(), InputError, "the checkpoint's Adam state of ",
                   name, " is incomplete");
      state[torch_compat::optimizer_state_key(p)] = std::move(s);
    }
  }
}

void map_per_element_state(std::map<std::string, torch::Tensor>& state,
                           const torch::OrderedDict<std::string, torch::Tensor>& params, const TensorsMap& map) {
  for (const char* kind : {"momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}) {
    std::vector<torch::Tensor> tensors;
    for (const auto& item : params) {
      const auto it = state.find(item.key() + "/" + kind);
      if (it != state.end()) tensors.push_back(it->second);
    }
    if (tensors.empty() || tensors.size() != params.size()) continue;
    const auto mapped = map(tensors);
    DAGR_ENFORCE(mapped.size() == params.size(), Error, "map_per_element_state: ", mapped.size(), " tensors back for ",
                 params.size());
    for (std::size_t i = 0; i < params.size(); ++i) state[params[i].key() + "/" + kind] = mapped[i];
  }
}

}  // namespace dagr
