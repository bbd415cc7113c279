// ModelOptions: which network a client builds, and the data shape it is built for.
//
// The architecture and feature width come from the run config ("model" section); the input shape
// and class count normally come from the dataset (fill_model_options_from_data). Plain value type.
// arch "torchscript" is a user's PyTorch model (torchscript_model.h): `path` names the file, and
// the coordinator pins its digest and tensor layout into the run config it sends.
#ifndef FEDTAIL_COMMON_LEARNING_MODEL_OPTIONS_H_
#define FEDTAIL_COMMON_LEARNING_MODEL_OPTIONS_H_

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"

namespace fedtail {

struct Dataset;

// One tensor of a model as the coordinator pinned it ("layout"): name, dtype name ("float32",
// "int64", ...) and shape.
struct TensorLayout {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  bool operator==(const TensorLayout& o) const {
    return name == o.name && dtype == o.dtype && shape == o.shape;
  }
};

// The architecture name of a user's TorchScript model.
inline constexpr char kTorchScriptArch[] = "torchscript";

struct ModelOptions {
  // Backbone architecture: "cnn" (3 conv blocks, native width 128), "resnet8" (CIFAR ResNet,
  // blocks [1,1,1] at widths 16/32/64, native width 64), "resnet18" ([2,2,2,2] at 64..512, native
  // 512), "resnet34" ([3,4,6,3] at 64..512, native 512) or "torchscript" (the module at `path`; its
  // native width is its head's input width). Default "cnn".
  std::string arch = "cnn";
  // Width of the feature vector the backbone emits. 0 (default) = the architecture's native width;
  // any other value adds a Linear(native, feature_dim) + ReLU projection inside the backbone.
  int feature_dim = 0;
  // Input channels (1 for Fashion-MNIST, 3 for CIFAR). 0 (default) = not known yet: fill it from
  // the data before make_model.
  int in_channels = 0;
  // Input height = width in pixels. 0 (default) = not known yet. The backbones accept any size
  // (adaptive pooling); the value is recorded so that every process builds the same model.
  int image_size = 0;
  // Number of classes of the default "classifier" head. 0 (default) = not known yet.
  int num_classes = 0;
  // Heterogeneous federations: the architectures of the clients' models, assigned by partition
  // (the client with partition k uses groups[k % groups.size()], as the FedSA/HtFLlib code assigns
  // model m mod |group|). Every entry is one of model_architectures(); repeats are allowed. Empty
  // (default) = every client uses `arch`; when set, `arch` is not used by the clients. Only
  // strategies without a global model (fedsa, fedproto) accept groups; the others refuse them.
  std::vector<std::string> groups;

  // arch "torchscript" only (other archs refuse them):
  // The torch.jit.save'd module (torchscript_model.h states the convention). Required. Clients
  // use their own --model-path when given (the file is the user's to distribute).
  std::string path;
  // Hex SHA-256 of that file. Optional in a config (the coordinator checks it when given); the
  // coordinator always sets it in the run config it sends, and every client checks its file.
  std::string sha256;
  // The tensors of the coordinator's initial model, set by the coordinator (never in a config
  // file); a client refuses a module whose tensors differ, naming the first difference.
  std::vector<TensorLayout> layout;
};

// The architectures make_model accepts, in documentation order.
const std::vector<std::string>& model_architectures();

// The feature width of `arch` without projection (cnn 128, resnet8 64, resnet18/34 512), or 0
// for an unknown architecture.
int native_feature_dim(const std::string& arch);

// Reads the "model" object at `path` (e.g. "config.model"): keys arch, feature_dim, in_channels,
// image_size, num_classes, groups, path, sha256, layout, all optional (path required for arch
// "torchscript", refused for the others; "torchscript" is not allowed in groups). Returns
// kInvalidArgument naming the field for a wrong type, an unknown key, an unknown arch
// (`config.model.arch: must be one of cnn, resnet8, resnet18, resnet34 (got "vgg")`,
// `config.model.groups[2]: must be one of ...`) or a negative size.
Result<ModelOptions> parse_model_options(const nlohmann::json& json, const std::string& path);

// Sets in_channels, image_size and num_classes from `data` where they are 0. Returns
// kInvalidArgument when a field already set disagrees with the data, or when the images are not
// square.
Status fill_model_options_from_data(const Dataset& data, ModelOptions* options);

// OK when make_model can build `options`: a known arch, known groups, feature_dim >= 0, and
// in_channels, image_size and num_classes all >= 1. Otherwise kInvalidArgument naming the field
// ("model.num_classes: must be >= 1 (got 0); fill it from the dataset").
Status validate_model_options(const ModelOptions& options);

// The options of the model of the client with partition `partition` (>= 0): `options` with arch
// = groups[partition % groups.size()] and groups cleared; `options` itself (groups cleared) when
// there are no groups.
ModelOptions client_model_options(const ModelOptions& options, int partition);

// The distinct architectures the clients use, in order of first appearance: the groups, or {arch}.
std::vector<std::string> client_architectures(const ModelOptions& options);

// The feature width every client's backbone emits: feature_dim when > 0, else the native width of
// the clients' architectures. kInvalidArgument naming model.feature_dim when feature_dim is 0 and
// the architectures' native widths differ (e.g. groups cnn 128 and resnet8 64), or model.arch /
// model.groups for an unknown architecture.
Result<int> common_feature_dim(const ModelOptions& options);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_LEARNING_MODEL_OPTIONS_H_
