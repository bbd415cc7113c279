// Models: a backbone that maps images to a feature vector, plus named linear heads.
//
// Model = ModelImpl (LibTorch C++ frontend, FooImpl + TORCH_MODULE). Every submodule is registered
// under a stable name, and these names are the TensorBundle keys on the wire:
//   backbone.<layer>...        the feature extractor, including the optional projection
//                              ("backbone.projection.weight"); BatchNorm statistics are buffers
//                              ("backbone.bn1.running_mean")
//   heads.<name>.weight/.bias  one Linear(feature_dim, out) per head; "classifier" always exists
// Strategies that split body and head (FedRep, FedBABU, FedLoGe) select by these prefixes.
//
// Backbones take float N×C×H×W (any C, any H×W >= 4: adaptive average pooling) and return
// N×feature_dim features after a ReLU and global average pooling, so features are >= 0.
//
// Thread-safety: a Model is a torch::nn::Module and is not safe for concurrent mutation; distinct
// models may be built and trained on distinct threads. Construction never reads or reseeds the
// global LibTorch generator: weights are drawn from private generators seeded from the Rng.
#ifndef FEDTAIL_COMMON_LEARNING_MODELS_H_
#define FEDTAIL_COMMON_LEARNING_MODELS_H_

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/learning/model_options.h"

namespace fedtail {

// The name of the head that forward() and train_local use.
inline constexpr char kClassifierHead[] = "classifier";

// A feature extractor: float N×C×H×W → float N×feature_dim(), values >= 0. Concrete backbones
// (CNN, CIFAR ResNets) live in models.cc; build them through make_model.
class BackboneImpl : public torch::nn::Module {
 public:
  // Runs the architecture's body and, when configured, the projection + ReLU.
  torch::Tensor forward(const torch::Tensor& x);

  // Width of forward()'s output.
  int64_t feature_dim() const { return feature_dim_; }
  // Width of the body's output before the projection (the architecture's native width).
  int64_t native_dim() const { return native_dim_; }

 protected:
  // The architecture: N×C×H×W → N×native_dim() after ReLU and global average pooling.
  virtual torch::Tensor body(const torch::Tensor& x) = 0;

  // Called by subclasses at the end of their constructor, after registering their layers, so the
  // projection is registered last. feature_dim 0 or == native: no projection.
  void set_dims(int64_t native_dim, int64_t feature_dim);

 private:
  int64_t native_dim_ = 0;
  int64_t feature_dim_ = 0;
  torch::nn::Linear projection_{nullptr};  // "projection", or empty
};

class ModelImpl : public torch::nn::Module {
 public:
  // Use make_model. Takes `backbone` (registered as "backbone") and adds the "classifier" head
  // (num_classes outputs). `head_seed` seeds the initialisation of every head added later.
  ModelImpl(const ModelOptions& options, std::shared_ptr<BackboneImpl> backbone,
            uint64_t head_seed);

  // Backbone features: float N×C×H×W on the model's device → N×feature_dim(), >= 0.
  torch::Tensor features(const torch::Tensor& x);
  // Logits of the "classifier" head: N×num_classes.
  torch::Tensor forward(const torch::Tensor& x);
  // Logits of head `name` on features(x). Aborts (FEDTAIL_CHECK) when there is no such head.
  torch::Tensor logits(const torch::Tensor& x, const std::string& name);

  // Adds head `name` = Linear(feature_dim(), out_features), registered as "heads.<name>", on the
  // model's current device. Its initial weights are a function of the model's Rng and `name` only
  // (not of the order heads are added). Returns kInvalidArgument when `name` exists already, is
  // empty or has characters other than [A-Za-z0-9_], or when out_features < 1.
  Status add_head(const std::string& name, int64_t out_features, bool bias = true);
  // The head `name`; shares parameters with the model. Aborts when there is no such head: test
  // has_head first when the name is not known to exist.
  torch::nn::Linear head(const std::string& name) const;
  bool has_head(const std::string& name) const;
  // Head names in the order they were added ("classifier" first).
  std::vector<std::string> head_names() const;

  std::shared_ptr<BackboneImpl> backbone() const { return backbone_; }
  // The options the model was built from, with feature_dim resolved (never 0).
  const ModelOptions& options() const { return options_; }
  int64_t feature_dim() const { return options_.feature_dim; }
  int64_t num_classes() const { return options_.num_classes; }

 private:
  // Constant after construction.
  ModelOptions options_;
  uint64_t head_seed_;
  std::shared_ptr<BackboneImpl> backbone_;
  std::shared_ptr<torch::nn::Module> heads_;  // container registered as "heads"

  std::vector<std::pair<std::string, torch::nn::Linear>> head_list_;  // in the order added
};
TORCH_MODULE(Model);

// Builds the model `options` describes, on the CPU, in training mode (move it with ->to(device)).
// Weights are a function of `options` and the next draws of `rng` only: the same Rng state gives
// bit-identical models. Convolutions use Kaiming-normal (fan_out, ReLU) weights, linear layers
// PyTorch's default uniform(±1/sqrt(fan_in)), BatchNorm weight 1 and bias 0. Returns
// kInvalidArgument naming the field when validate_model_options fails.
Result<Model> make_model(const ModelOptions& options, Rng& rng);

// A deep copy of `model`: same options, heads, parameter and buffer values, requires_grad flags
// and training mode, on the same device as `model`'s parameters. Returns kInternal on a LibTorch
// failure.
Result<Model> clone_model(const Model& model);

// Number of scalar parameters (weights and biases, not buffers) of `module`.
int64_t count_parameters(const torch::nn::Module& module);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_LEARNING_MODELS_H_
