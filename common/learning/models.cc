#include "common/learning/models.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>

#include "common/learning/torchscript_model.h"

namespace fedtail {

namespace {

namespace nn = torch::nn;

nn::Conv2d conv3x3(int64_t in, int64_t out, int64_t stride) {
  return nn::Conv2d(
      nn::Conv2dOptions(in, out, /*kernel_size=*/3).stride(stride).padding(1).bias(false));
}

nn::Conv2d conv1x1(int64_t in, int64_t out, int64_t stride) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, /*kernel_size=*/1).stride(stride).bias(false));
}

torch::Tensor global_average_pool(const torch::Tensor& x) {
  return torch::adaptive_avg_pool2d(x, {1, 1}).flatten(/*start_dim=*/1);
}

// Small CNN: three 3×3 conv blocks (32, 64, 128 channels) with BatchNorm and ReLU, 2×2 max-pool
// after the first two, global average pooling, then fc(128 → 128) + ReLU. Native width 128.
class CnnBackboneImpl final : public BackboneImpl {
 public:
  CnnBackboneImpl(int64_t in_channels, int64_t feature_dim) {
    conv1_ = register_module("conv1", conv3x3(in_channels, 32, /*stride=*/1));
    bn1_ = register_module("bn1", nn::BatchNorm2d(32));
    conv2_ = register_module("conv2", conv3x3(32, 64, /*stride=*/1));
    bn2_ = register_module("bn2", nn::BatchNorm2d(64));
    conv3_ = register_module("conv3", conv3x3(64, 128, /*stride=*/1));
    bn3_ = register_module("bn3", nn::BatchNorm2d(128));
    fc_ = register_module("fc", nn::Linear(128, 128));
    set_dims(/*native_dim=*/128, feature_dim);
  }

 protected:
  torch::Tensor body(const torch::Tensor& x) override {
    auto h = torch::max_pool2d(torch::relu(bn1_(conv1_(x))), /*kernel_size=*/2);
    h = torch::max_pool2d(torch::relu(bn2_(conv2_(h))), /*kernel_size=*/2);
    h = torch::relu(bn3_(conv3_(h)));
    return torch::relu(fc_(global_average_pool(h)));
  }

 private:
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, conv3_{nullptr};
  nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr}, bn3_{nullptr};
  nn::Linear fc_{nullptr};
};

// ResNet BasicBlock: conv3×3(stride) BN ReLU conv3×3 BN, plus the identity or, when the shape
// changes, a 1×1 conv + BN shortcut ("shortcut.0", "shortcut.1"); ReLU after the sum.
class BasicBlockImpl : public nn::Module {
 public:
  BasicBlockImpl(int64_t in, int64_t out, int64_t stride) {
    conv1_ = register_module("conv1", conv3x3(in, out, stride));
    bn1_ = register_module("bn1", nn::BatchNorm2d(out));
    conv2_ = register_module("conv2", conv3x3(out, out, /*stride=*/1));
    bn2_ = register_module("bn2", nn::BatchNorm2d(out));
    if (stride != 1 || in != out) {
      shortcut_ = register_module("shortcut",
                                  nn::Sequential(conv1x1(in, out, stride), nn::BatchNorm2d(out)));
    }
  }

  torch::Tensor forward(const torch::Tensor& x) {
    auto h = torch::relu(bn1_(conv1_(x)));
    h = bn2_(conv2_(h));
    return torch::relu(h + (shortcut_.is_empty() ? x : shortcut_->forward(x)));
  }

 private:
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr};
  nn::Sequential shortcut_{nullptr};
};
TORCH_MODULE(BasicBlock);

// CIFAR-style ResNet: 3×3 stride-1 stem ("conv1", "bn1"), no max-pool, then stages
// "layer1".."layerK" of BasicBlocks (stride 1 for the first stage, 2 after), global average
// pooling. Native width = the last stage's width.
class ResNetBackboneImpl final : public BackboneImpl {
 public:
  ResNetBackboneImpl(int64_t in_channels, const std::vector<int>& blocks,
                     const std::vector<int64_t>& widths, int64_t feature_dim) {
    conv1_ = register_module("conv1", conv3x3(in_channels, widths[0], /*stride=*/1));
    bn1_ = register_module("bn1", nn::BatchNorm2d(widths[0]));
    int64_t in = widths[0];
    for (size_t s = 0; s < blocks.size(); ++s) {
      nn::Sequential stage;
      for (int b = 0; b < blocks[s]; ++b) {
        int64_t stride = (s > 0 && b == 0) ? 2 : 1;
        stage->push_back(BasicBlock(in, widths[s], stride));
        in = widths[s];
      }
      stages_.push_back(register_module("layer" + std::to_string(s + 1), stage));
    }
    set_dims(/*native_dim=*/in, feature_dim);
  }

 protected:
  torch::Tensor body(const torch::Tensor& x) override {
    auto h = torch::relu(bn1_(conv1_(x)));
    for (auto& stage : stages_) h = stage->forward(h);
    return global_average_pool(h);
  }

 private:
  nn::Conv2d conv1_{nullptr};
  nn::BatchNorm2d bn1_{nullptr};
  std::vector<nn::Sequential> stages_;
};

// Re-initialises every Conv2d and Linear inside `module` from `generator`, in the deterministic
// pre-order of modules(). BatchNorm keeps LibTorch's weight 1 / bias 0.
void initialize(nn::Module& module, at::Generator generator) {
  torch::NoGradGuard no_grad;
  for (const auto& m : module.modules(/*include_self=*/true)) {
    if (auto* conv = m->as<nn::Conv2d>()) {
      const auto& w = conv->weight;
      const double fan_out = static_cast<double>(w.size(0) * w.size(2) * w.size(3));
      w.normal_(/*mean=*/0.0, /*std=*/std::sqrt(2.0 / fan_out), generator);
      if (conv->bias.defined()) conv->bias.zero_();
    } else if (auto* linear = m->as<nn::Linear>()) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(linear->weight.size(1)));
      linear->weight.uniform_(-bound, bound, generator);
      if (linear->bias.defined()) linear->bias.uniform_(-bound, bound, generator);
    }
  }
}

at::Generator make_generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

std::shared_ptr<BackboneImpl> make_backbone(const ModelOptions& o) {
  const int64_t dim = o.feature_dim;
  if (o.arch == "cnn") return std::make_shared<CnnBackboneImpl>(o.in_channels, dim);
  if (o.arch == "resnet8") {
    return std::make_shared<ResNetBackboneImpl>(o.in_channels, std::vector<int>{1, 1, 1},
                                                std::vector<int64_t>{16, 32, 64}, dim);
  }
  const std::vector<int64_t> wide = {64, 128, 256, 512};
  if (o.arch == "resnet18") {
    return std::make_shared<ResNetBackboneImpl>(o.in_channels, std::vector<int>{2, 2, 2, 2}, wide,
                                                dim);
  }
  FEDTAIL_CHECK(o.arch == "resnet34");
  return std::make_shared<ResNetBackboneImpl>(o.in_channels, std::vector<int>{3, 4, 6, 3}, wide,
                                              dim);
}

bool valid_head_name(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name) {
    bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

torch::Tensor BackboneImpl::forward(const torch::Tensor& x) {
  auto h = body(x);
  if (!projection_.is_empty()) h = torch::relu(projection_(h));
  return h;
}

void BackboneImpl::set_dims(int64_t native_dim, int64_t feature_dim) {
  native_dim_ = native_dim;
  feature_dim_ = feature_dim == 0 ? native_dim : feature_dim;
  if (feature_dim_ != native_dim_) {
    projection_ = register_module("projection", nn::Linear(native_dim_, feature_dim_));
  }
}

ModelImpl::ModelImpl(const ModelOptions& options, std::shared_ptr<BackboneImpl> backbone,
                     uint64_t head_seed)
    : options_(options), head_seed_(head_seed) {
  backbone_ = register_module("backbone", std::move(backbone));
  options_.feature_dim = static_cast<int>(backbone_->feature_dim());
  heads_ = register_module("heads", std::make_shared<nn::Module>());
  Status s = add_head(kClassifierHead, options_.num_classes);
  FEDTAIL_CHECK(s.ok());
}

torch::Tensor ModelImpl::features(const torch::Tensor& x) { return backbone_->forward(x); }

torch::Tensor ModelImpl::forward(const torch::Tensor& x) { return logits(x, kClassifierHead); }

torch::Tensor ModelImpl::logits(const torch::Tensor& x, const std::string& name) {
  return head(name)->forward(features(x));
}

Status ModelImpl::add_head(const std::string& name, int64_t out_features, bool bias) {
  if (!valid_head_name(name)) {
    return Status::InvalidArgument("model head \"" + name +
                                   "\": names must be non-empty [A-Za-z0-9_]");
  }
  if (has_head(name)) return Status::InvalidArgument("model head \"" + name + "\": already exists");
  if (out_features < 1) {
    return Status::InvalidArgument("model head \"" + name + "\": out_features must be >= 1 (got " +
                                   std::to_string(out_features) + ")");
  }
  nn::Linear linear(nn::LinearOptions(options_.feature_dim, out_features).bias(bias));
  Rng rng = Rng::derive(head_seed_, "fedtail.model.head." + name);
  initialize(*linear, make_generator(rng.seed_for_torch()));
  // Follow the model: a head added after ->to(cuda) lives on the GPU too.
  auto params = backbone_->parameters();
  if (!params.empty()) linear->to(params.front().device());
  heads_->register_module(name, linear);
  head_list_.emplace_back(name, linear);
  return Status::OK();
}

torch::nn::Linear ModelImpl::head(const std::string& name) const {
  for (const auto& [n, linear] : head_list_) {
    if (n == name) return linear;
  }
  FEDTAIL_CHECK(false && "ModelImpl::head: no head with this name");
  return nullptr;
}

bool ModelImpl::has_head(const std::string& name) const {
  for (const auto& entry : head_list_) {
    if (entry.first == name) return true;
  }
  return false;
}

std::vector<std::string> ModelImpl::head_names() const {
  std::vector<std::string> names;
  for (const auto& entry : head_list_) names.push_back(entry.first);
  return names;
}

Result<Model> make_model(const ModelOptions& options, Rng& rng) {
  FEDTAIL_RETURN_IF_ERROR(validate_model_options(options));
  const uint64_t backbone_seed = rng.seed_for_torch();
  const uint64_t head_seed = rng.seed_for_torch();
  try {
    if (options.arch == kTorchScriptArch) {
      // The module's own weights; only a projection (feature_dim) is drawn from the seed.
      TorchScriptHead head;
      FEDTAIL_ASSIGN_OR_RETURN(std::shared_ptr<BackboneImpl> backbone,
                               make_torchscript_backbone(options, &head));
      initialize(*backbone, make_generator(backbone_seed));
      Model model(std::make_shared<ModelImpl>(options, std::move(backbone), head_seed));
      FEDTAIL_RETURN_IF_ERROR(install_torchscript_head(head, model.get()));
      return model;
    }
    auto backbone = make_backbone(options);
    initialize(*backbone, make_generator(backbone_seed));
    return Model(std::make_shared<ModelImpl>(options, std::move(backbone), head_seed));
  } catch (const std::exception& e) {
    return Status::Internal("make_model(" + options.arch + "): " + e.what());
  }
}

Result<Model> clone_model(const Model& model) {
  try {
    Rng unused(0);  // every value is overwritten below
    FEDTAIL_ASSIGN_OR_RETURN(Model copy, make_model(model->options(), unused));
    for (const auto& name : model->head_names()) {
      if (name == kClassifierHead) continue;
      auto h = model->head(name);
      FEDTAIL_RETURN_IF_ERROR(copy->add_head(name, h->options.out_features(), h->options.bias()));
    }
    auto params = model->parameters();
    if (!params.empty()) copy->to(params.front().device());
    torch::NoGradGuard no_grad;
    auto src_params = model->named_parameters(/*recurse=*/true);
    for (auto& p : copy->named_parameters(/*recurse=*/true)) {
      const auto& src = src_params[p.key()];
      p.value().copy_(src);
      p.value().set_requires_grad(src.requires_grad());
    }
    auto src_buffers = model->named_buffers(/*recurse=*/true);
    for (auto& b : copy->named_buffers(/*recurse=*/true)) b.value().copy_(src_buffers[b.key()]);
    copy->train(model->is_training());
    return copy;
  } catch (const std::exception& e) {
    return Status::Internal(std::string("clone_model: ") + e.what());
  }
}

int64_t count_parameters(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
}

}  // namespace fedtail
