#include "common/learning/torchscript_model.h"

#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "common/learning/torch_bundle.h"
#include "common/security/crypto.h"
#include "common/wire/dtype.h"

namespace fedtail {

namespace {

constexpr char kHeadModule[] = "head";
constexpr char kFeaturesMethod[] = "features";

std::string shape_text(const torch::Tensor& t) { return shape_to_string(t.sizes().vec()); }

std::string spec_text(const std::string& dtype, const std::vector<int64_t>& shape) {
  return dtype + " " + shape_to_string(shape);
}

std::string dtype_text(const torch::Tensor& t) {
  Result<DType> d = dtype_from_torch(t.scalar_type());
  return d.ok() ? dtype_name(*d) : std::string(c10::toString(t.scalar_type()));
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// The error of a failed TorchScript call: its last non-empty line ("RuntimeError: ...") after the
// interpreter's traceback, or the first line of a plain LibTorch error.
std::string script_error(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string text = c10_error ? c10_error->what_without_backtrace() : e.what();
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (text.find("Traceback") == std::string::npos) return first_line(text);
  return text.substr(text.rfind('\n') + 1);
}

// fedtail's backbone around a loaded module: its parameters and buffers (except the head's) are
// registered in a mirror of the module's hierarchy, sharing storage, so names, optimisers,
// ->to(device), state bundles and strategies see them as any backbone's.
class TorchScriptBackboneImpl final : public BackboneImpl {
 public:
  TorchScriptBackboneImpl(torch::jit::Module module, int64_t native_dim, int64_t feature_dim)
      : module_(std::move(module)) {
    for (const auto& p : module_.named_parameters(/*recurse=*/true)) {
      if (in_head(p.name)) continue;
      std::string leaf;
      torch::nn::Module* owner = owner_of(p.name, &leaf);
      // Trainable as any backbone's: strategies decide what to freeze.
      owner->register_parameter(leaf, p.value, /*requires_grad=*/true);
    }
    for (const auto& b : module_.named_buffers(/*recurse=*/true)) {
      if (in_head(b.name)) continue;
      std::string leaf;
      owner_of(b.name, &leaf)->register_buffer(leaf, b.value);
    }
    set_dims(native_dim, feature_dim);
    module_.train(is_training());
  }

  void train(bool on) override {
    BackboneImpl::train(on);
    module_.train(on);
  }

 protected:
  torch::Tensor body(const torch::Tensor& x) override {
    return module_.get_method(kFeaturesMethod)({x}).toTensor();
  }

 private:
  static bool in_head(const std::string& name) {
    return name.compare(0, sizeof(kHeadModule), std::string(kHeadModule) + ".") == 0;
  }

  // The mirror module that owns dotted `name` ("layer1.0.conv1.weight" → the module at
  // "layer1.0.conv1", created on first use); *leaf = the last component.
  torch::nn::Module* owner_of(const std::string& name, std::string* leaf) {
    const size_t dot = name.rfind('.');
    *leaf = dot == std::string::npos ? name : name.substr(dot + 1);
    if (dot == std::string::npos) return this;
    const std::string path = name.substr(0, dot);
    auto found = mirrors_.find(path);
    if (found != mirrors_.end()) return found->second.get();
    std::string parent_leaf;
    torch::nn::Module* parent = owner_of(path, &parent_leaf);
    auto child = parent->register_module(parent_leaf, std::make_shared<torch::nn::Module>());
    mirrors_.emplace(path, child);
    return child.get();
  }

  torch::jit::Module module_;
  std::map<std::string, std::shared_ptr<torch::nn::Module>> mirrors_;
};

struct LoadedModule {
  torch::jit::Module module;
  TorchScriptHead head;
};

Result<LoadedModule> load_module(const ModelOptions& options) {
  const std::string where = "model.path: " + options.path;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(options.path, ec)) {
    return Status::NotFound(where + ": no such file (export one with tools/export_model.py)");
  }
  LoadedModule out;
  try {
    out.module = torch::jit::load(options.path, torch::kCPU);
  } catch (const c10::Error& e) {
    return Status::InvalidArgument(where + ": not a TorchScript module torch.jit.save wrote (" +
                                   first_line(e.what_without_backtrace()) + ")");
  }
  const char* convention =
      " (fedtail's convention: a method features(x) -> N×D, exported with @torch.jit.export, and a "
      "submodule `head` = Linear(D, num_classes))";
  if (!out.module.find_method(kFeaturesMethod)) {
    return Status::InvalidArgument(where + ": the module has no method features(x)" + convention);
  }
  std::optional<torch::jit::Module> head;
  for (const auto& child : out.module.named_children()) {
    if (child.name == kHeadModule) head = child.value;
  }
  if (!head) {
    return Status::InvalidArgument(where + ": the module has no submodule `head`" + convention);
  }
  for (const auto& p : head->named_parameters(/*recurse=*/true)) {
    if (p.name == "weight") {
      out.head.weight = p.value;
    } else if (p.name == "bias") {
      out.head.bias = p.value;
    } else {
      return Status::InvalidArgument(where + ": head." + p.name +
                                     ": the head must be a Linear (weight and bias only)" +
                                     convention);
    }
  }
  if (!out.head.weight.defined() || out.head.weight.dim() != 2 ||
      !out.head.weight.is_floating_point()) {
    return Status::InvalidArgument(where + ": head.weight must be a float [num_classes, D] matrix" +
                                   convention);
  }
  const int64_t classes = out.head.weight.size(0);
  if (out.head.bias.defined() && out.head.bias.sizes().vec() != std::vector<int64_t>{classes}) {
    return Status::InvalidArgument(where + ": head.bias has shape " + shape_text(out.head.bias) +
                                   ", head.weight " + shape_text(out.head.weight));
  }
  if (options.num_classes > 0 && classes != options.num_classes) {
    return Status::InvalidArgument(where + ": head.weight has " + std::to_string(classes) +
                                   " rows (classes), the run has " +
                                   std::to_string(options.num_classes) + " classes");
  }
  return out;
}

// Runs features() once on zeros of the run's input shape and checks it gives N×D.
Status probe_features(torch::jit::Module& module, const ModelOptions& options, int64_t dim) {
  if (options.in_channels <= 0 || options.image_size <= 0) return Status::OK();
  const std::string where = "model.path: " + options.path;
  torch::Tensor out;
  try {
    torch::NoGradGuard no_grad;
    module.eval();
    auto x = torch::zeros({2, options.in_channels, options.image_size, options.image_size});
    torch::IValue v = module.get_method(kFeaturesMethod)({x});
    module.train(true);
    if (!v.isTensor()) {
      return Status::InvalidArgument(where + ": features(x) must return a tensor (got " +
                                     v.tagKind() + ")");
    }
    out = v.toTensor();
  } catch (const std::exception& e) {
    module.train(true);
    return Status::InvalidArgument(
        where + ": features(x) failed on a 2×" + std::to_string(options.in_channels) + "×" +
        std::to_string(options.image_size) + "×" + std::to_string(options.image_size) +
        " input: " + script_error(e));
  }
  if (out.dim() != 2 || out.size(0) != 2 || out.size(1) != dim) {
    return Status::InvalidArgument(
        where + ": features(x) of a 2×" + std::to_string(options.in_channels) + "×" +
        std::to_string(options.image_size) + "×" + std::to_string(options.image_size) +
        " input has shape " + shape_text(out) + "; it must be " + shape_to_string({2, dim}) +
        " (D = head.weight's columns)");
  }
  return Status::OK();
}

}  // namespace

Result<std::shared_ptr<BackboneImpl>> make_torchscript_backbone(const ModelOptions& options,
                                                                TorchScriptHead* head) {
  FEDTAIL_ASSIGN_OR_RETURN(LoadedModule loaded, load_module(options));
  const int64_t dim = loaded.head.weight.size(1);
  FEDTAIL_RETURN_IF_ERROR(probe_features(loaded.module, options, dim));
  *head = loaded.head;
  try {
    return std::shared_ptr<BackboneImpl>(std::make_shared<TorchScriptBackboneImpl>(
        std::move(loaded.module), dim, options.feature_dim));
  } catch (const c10::Error& e) {
    return Status::InvalidArgument("model.path: " + options.path + ": " +
                                   first_line(e.what_without_backtrace()));
  }
}

Status install_torchscript_head(const TorchScriptHead& head, ModelImpl* model) {
  torch::nn::Linear classifier = model->head(kClassifierHead);
  if (classifier->weight.sizes() != head.weight.sizes()) return Status::OK();
  torch::NoGradGuard no_grad;
  classifier->weight.copy_(head.weight);
  if (classifier->bias.defined()) {
    if (head.bias.defined()) {
      classifier->bias.copy_(head.bias);
    } else {
      classifier->bias.zero_();
    }
  }
  return Status::OK();
}

Result<int> torchscript_feature_dim(const ModelOptions& options) {
  ModelOptions unsized = options;
  unsized.num_classes = 0;
  FEDTAIL_ASSIGN_OR_RETURN(LoadedModule loaded, load_module(unsized));
  return static_cast<int>(loaded.head.weight.size(1));
}

Result<std::string> file_sha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound(path + ": cannot read");
  Sha256 hasher;
  std::vector<char> buffer(1 << 16);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    if (in.gcount() > 0) hasher.update(buffer.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) return Status::IOError(path + ": read failed");
  return to_hex(hasher.finish());
}

std::vector<TensorLayout> model_layout(const torch::nn::Module& model) {
  std::vector<TensorLayout> out;
  model.apply([&out](const std::string& prefix, const torch::nn::Module& m) {
    auto add = [&](const std::string& key, const torch::Tensor& t) {
      if (!t.defined()) return;
      out.push_back({prefix.empty() ? key : prefix + "." + key, dtype_text(t), t.sizes().vec()});
    };
    for (const auto& p : m.named_parameters(/*recurse=*/false)) add(p.key(), p.value());
    for (const auto& b : m.named_buffers(/*recurse=*/false)) add(b.key(), b.value());
  });
  return out;
}

Status pin_torchscript_model(ModelOptions* options) {
  if (options->arch != kTorchScriptArch) return Status::OK();
  // The module first: its errors say what is wrong with the file ("model.path: ...").
  ModelOptions unpinned = *options;
  unpinned.layout.clear();
  Rng rng(0);  // only the layout is used
  FEDTAIL_ASSIGN_OR_RETURN(Model model, make_model(unpinned, rng));
  FEDTAIL_ASSIGN_OR_RETURN(std::string digest, file_sha256(options->path));
  if (!options->sha256.empty() && options->sha256 != digest) {
    return Status::InvalidArgument("model.sha256: the config says " + options->sha256 +
                                   ", the file " + options->path + " has " + digest);
  }
  options->sha256 = digest;
  options->layout = model_layout(*model);
  return Status::OK();
}

Status check_torchscript_pins(const ModelOptions& options, const torch::nn::Module& model,
                              const std::string& file) {
  if (options.arch != kTorchScriptArch) return Status::OK();
  const std::string mine = "this client's module (" + file + ")";
  if (!options.layout.empty()) {
    const std::vector<TensorLayout> have = model_layout(model);
    const size_t n = std::min(have.size(), options.layout.size());
    for (size_t i = 0; i < n; ++i) {
      const TensorLayout& want = options.layout[i];
      if (want == have[i]) continue;
      return Status::FailedPrecondition(
          "model.layout: tensor " + std::to_string(i) + ": the coordinator's model has \"" +
          want.name + "\" " + spec_text(want.dtype, want.shape) + ", " + mine + " has \"" +
          have[i].name + "\" " + spec_text(have[i].dtype, have[i].shape));
    }
    if (have.size() != options.layout.size()) {
      const bool longer = have.size() > options.layout.size();
      const TensorLayout& extra = longer ? have[n] : options.layout[n];
      return Status::FailedPrecondition(
          "model.layout: the coordinator's model has " + std::to_string(options.layout.size()) +
          " tensors, " + mine + " has " + std::to_string(have.size()) + "; the first " +
          (longer ? "extra" : "missing") + " one is \"" + extra.name + "\" " +
          spec_text(extra.dtype, extra.shape));
    }
  }
  if (!options.sha256.empty()) {
    FEDTAIL_ASSIGN_OR_RETURN(std::string digest, file_sha256(file));
    if (digest != options.sha256) {
      return Status::FailedPrecondition(
          "model.sha256: " + mine + " has SHA-256 " + digest + ", the coordinator's has " +
          options.sha256 +
          " (same tensors, different file): give every client the coordinator's module file");
    }
  }
  return Status::OK();
}

}  // namespace fedtail
