// TorchScript modules built in C++ (torch::jit::Module + register_parameter + define), so tests of
// config.model.arch "torchscript" need no Python. The module follows fedtail's convention
// (common/learning/torchscript_model.h) unless a spec field breaks it on purpose:
//   body.conv_w [width, C, 3, 3], body.conv_b [width]; BatchNorm body.bn_w/bn_b and buffers
//   body.bn_mean/bn_var; fc_w [feature_dim, width], fc_b [feature_dim];
//   features(x) = relu(fc(mean_hw(relu(bn(conv3x3(x))))))  → N×feature_dim
//   head.weight [num_classes, feature_dim], head.bias [num_classes]
#ifndef FEDTAIL_TESTS_SUPPORT_TORCHSCRIPT_MODULES_H_
#define FEDTAIL_TESTS_SUPPORT_TORCHSCRIPT_MODULES_H_

#include <torch/script.h>
#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace fedtail::test_support {

struct ScriptedNetSpec {
  int in_channels = 1;
  int width = 8;
  int feature_dim = 16;
  int num_classes = 10;
  uint64_t seed = 1;  // the weights' generator
  bool with_head = true;
  bool with_features = true;
  bool head_bias = true;
  bool features_4d = false;  // features(x) returns N×D×1×1 (wrong on purpose)
};

inline torch::jit::Module make_scripted_net(const ScriptedNetSpec& spec) {
  torch::manual_seed(spec.seed);
  auto new_module = [](const char* name) {
    torch::jit::Module m(name);
    m.register_attribute("training", c10::BoolType::get(), true);
    return m;
  };
  torch::jit::Module body = new_module("Body");
  body.register_parameter("conv_w", torch::randn({spec.width, spec.in_channels, 3, 3}) * 0.3,
                          false);
  body.register_parameter("conv_b", torch::zeros({spec.width}), false);
  body.register_parameter("bn_w", torch::ones({spec.width}), false);
  body.register_parameter("bn_b", torch::zeros({spec.width}), false);
  body.register_buffer("bn_mean", torch::zeros({spec.width}));
  body.register_buffer("bn_var", torch::ones({spec.width}));

  torch::jit::Module net = new_module("Net");
  net.register_module("body", body);
  net.register_parameter("fc_w", torch::randn({spec.feature_dim, spec.width}) * 0.3, false);
  net.register_parameter("fc_b", torch::zeros({spec.feature_dim}), false);
  if (spec.with_head) {
    torch::jit::Module head = new_module("Head");
    head.register_parameter("weight", torch::randn({spec.num_classes, spec.feature_dim}) * 0.2,
                            false);
    if (spec.head_bias) head.register_parameter("bias", torch::zeros({spec.num_classes}), false);
    net.register_module("head", head);
  }
  if (spec.with_features) {
    net.define(std::string(R"JIT(
def features(self, x):
    h = torch.conv2d(x, self.body.conv_w, self.body.conv_b, [1, 1], [1, 1])
    h = torch.batch_norm(h, self.body.bn_w, self.body.bn_b, self.body.bn_mean, self.body.bn_var,
                         self.training, 0.1, 1e-5, False)
    h = torch.mean(torch.relu(h), [2, 3])
    f = torch.relu(torch.matmul(h, self.fc_w.t()) + self.fc_b)
)JIT") + (spec.features_4d ? "    return f.unsqueeze(2).unsqueeze(3)\n" : "    return f\n"));
  } else {
    net.define(R"JIT(
def forward(self, x):
    return x
)JIT");
  }
  for (const auto& p : net.parameters()) p.set_requires_grad(true);
  return net;
}

inline void save_scripted_net(const ScriptedNetSpec& spec, const std::string& path) {
  make_scripted_net(spec).save(path);
}

}  // namespace fedtail::test_support

#endif  // FEDTAIL_TESTS_SUPPORT_TORCHSCRIPT_MODULES_H_
