// TorchScript models: bring your own PyTorch model (config.model.arch "torchscript").
//
// The convention a module saved with torch.jit.save must follow (tools/export_model.py writes one):
//   - a method `features(x)`: float N×C×H×W → float N×D (the body; exported with
//     @torch.jit.export), and
//   - a submodule `head`: the classifier, a Linear with `weight` [num_classes, D] and optionally
//     `bias` [num_classes]. forward() is not used (fedtail's forward is head(features(x))).
// Every parameter and buffer outside `head` becomes part of fedtail's backbone under the name
// "backbone.<its name in the module>" (BatchNorm statistics included); `head` becomes the
// "classifier" head ("heads.classifier.weight"/".bias"; zero bias when the module's head has
// none). So strategies that split body and head (FedLoGe, FedSA, FedProto, FedRep, FedBABU, ...)
// work unchanged. The module's tensors are shared, not copied: training fedtail's model trains the
// module. Tensors the module uses must be parameters or buffers (other tensor attributes do not
// follow model->to(device)). The initial weights are the file's, not drawn from the seed.
//
// Pinning (run config): the coordinator loads the module, checks it against the data, and sets
// model.sha256 (checked against the config's when given) and model.layout (its tensors' names,
// dtypes and shapes) in the run config it sends. A client loads its own copy (--model-path, else
// model.path) and refuses to join when the tensors differ (naming the first difference) or when
// the file's digest differs.
//
// Thread-safety: functions are thread-safe; each model owns its own loaded module.
#ifndef FEDTAIL_COMMON_LEARNING_TORCHSCRIPT_MODEL_H_
#define FEDTAIL_COMMON_LEARNING_TORCHSCRIPT_MODEL_H_

#include <memory>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/learning/model_options.h"
#include "common/learning/models.h"

namespace fedtail {

// Loads options.path and builds fedtail's backbone around it; `*head` receives the module's head
// (weight, and bias or an undefined tensor), to be copied into the classifier by
// install_torchscript_head. Checks the convention, and, when in_channels/image_size/num_classes
// are known (> 0), runs features() once on zeros (eval mode, no grad) to check the output shape.
// kNotFound when the file is missing; kInvalidArgument "model.path: <file>: ..." naming what is
// missing or wrong (no features method, no head submodule, head rows != num_classes, features
// that are not N×D with D = head's input width).
struct TorchScriptHead {
  torch::Tensor weight;
  torch::Tensor bias;
};
Result<std::shared_ptr<BackboneImpl>> make_torchscript_backbone(const ModelOptions& options,
                                                                TorchScriptHead* head);

// Copies `head` into `model`'s classifier when the shapes agree (feature_dim == the module's D);
// leaves fedtail's initialisation otherwise (a projection changed the width).
Status install_torchscript_head(const TorchScriptHead& head, ModelImpl* model);

// The native feature width of the module at options.path (its head's input width).
Result<int> torchscript_feature_dim(const ModelOptions& options);

// Hex SHA-256 of the file at `path`. kNotFound when it cannot be read.
Result<std::string> file_sha256(const std::string& path);

// The tensors of `model` in state order (parameters then buffers per submodule).
std::vector<TensorLayout> model_layout(const torch::nn::Module& model);

// Coordinator side. For arch "torchscript": builds the model from `options` (sizes filled), and
// sets options->sha256 (or checks the configured one: kInvalidArgument "model.sha256: ... the
// file's is ...") and options->layout. No-op for other archs.
Status pin_torchscript_model(ModelOptions* options);

// Client side. For arch "torchscript" with a pinned layout/digest: kFailedPrecondition when
// `model`'s tensors differ from options.layout ("model.layout: the coordinator's model has
// tensor \"backbone.fc.weight\" float32 [10, 64], this client's module (<file>) has ... ") or
// when `file`'s SHA-256 differs from options.sha256. No-op for other archs.
Status check_torchscript_pins(const ModelOptions& options, const torch::nn::Module& model,
                              const std::string& file);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_LEARNING_TORCHSCRIPT_MODEL_H_
