#include "common/learning/torch_bundle.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/base/rng.h"
#include "common/wire/bundle_codec.h"

namespace fedtail {
namespace {

void seed_torch(uint64_t key) {
  torch::manual_seed(Rng::derive(/*seed=*/7, "torch_bundle_test", {key}).seed_for_torch());
}

TEST(TorchBundleTest, TensorsRoundTripForEveryDType) {
  seed_torch(1);
  const std::vector<torch::Tensor> inputs = {
      torch::randn({3, 4}),
      torch::randn({2, 2}, torch::kFloat64),
      torch::randn({5}).to(torch::kFloat16),
      torch::randn({5}).to(torch::kBFloat16),
      torch::arange(6, torch::kInt64).reshape({2, 3}),
      torch::arange(4, torch::kInt32),
      torch::arange(200, 210, torch::kInt32).to(torch::kUInt8),
      torch::tensor({true, false, true}),
      torch::tensor(3.5),    // scalar
      torch::zeros({0, 3}),  // empty
  };
  for (const torch::Tensor& input : inputs) {
    Result<NamedTensor> t = from_torch("t", input);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    EXPECT_EQ(t->shape(), input.sizes().vec());
    EXPECT_EQ(dtype_to_torch(t->dtype()), input.scalar_type());
    torch::Tensor back = to_torch(*t);
    EXPECT_TRUE(back.device().is_cpu());
    EXPECT_EQ(back.scalar_type(), input.scalar_type());
    EXPECT_TRUE(torch::equal(back, input)) << input;
  }
}

TEST(TorchBundleTest, FromTorchCopiesNonContiguousAndGradTensors) {
  seed_torch(2);
  torch::Tensor base = torch::randn({4, 6}, torch::requires_grad());
  torch::Tensor view = base.t();  // non-contiguous, part of an autograd graph
  Result<NamedTensor> t = from_torch("v", view);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->shape(), (std::vector<int64_t>{6, 4}));
  EXPECT_EQ(t->data<float>()[1], view[0][1].item<float>());
  EXPECT_TRUE(torch::equal(to_torch(*t), view.detach()));
}

TEST(TorchBundleTest, ToTorchCopiesOrTakesOverTheBuffer) {
  NamedTensor t = NamedTensor::from_values<float>("x", DType::kFloat32, {2, 2}, {1, 2, 3, 4});
  torch::Tensor copy = to_torch(t);
  copy[0][0] = 9.0f;
  EXPECT_EQ(t.data<float>()[0], 1.0f);
  const void* raw = t.bytes();
  torch::Tensor owned = to_torch(std::move(t));
  EXPECT_EQ(owned.data_ptr(), raw);
  EXPECT_EQ(owned[1][1].item<float>(), 4.0f);
}

TEST(TorchBundleTest, RejectsUnsupportedAndUndefinedTensors) {
  Result<NamedTensor> int8 = from_torch("q.scale", torch::zeros({2}, torch::kInt8));
  EXPECT_EQ(int8.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(int8.status().message().find("tensor \"q.scale\""), std::string::npos);
  EXPECT_EQ(from_torch("u", torch::Tensor()).status().code(), StatusCode::kInvalidArgument);
}

struct NetImpl : torch::nn::Module {
  NetImpl()
      : conv(register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3)))),
        bn(register_module("bn", torch::nn::BatchNorm2d(4))),
        head(register_module(
            "head",
            torch::nn::Sequential(torch::nn::Linear(torch::nn::LinearOptions(4, 3).bias(false)),
                                  torch::nn::Linear(3, 2)))) {}
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(bn(conv(x)));
    x = x.mean({2, 3});
    return head->forward(x);
  }
  torch::nn::Conv2d conv;
  torch::nn::BatchNorm2d bn;
  torch::nn::Sequential head;
};
TORCH_MODULE(Net);

const std::vector<std::string> kNetStateNames = {"conv.weight",
                                                 "conv.bias",
                                                 "bn.weight",
                                                 "bn.bias",
                                                 "bn.running_mean",
                                                 "bn.running_var",
                                                 "bn.num_batches_tracked",
                                                 "head.0.weight",
                                                 "head.1.weight",
                                                 "head.1.bias"};

// A net whose BatchNorm statistics have moved away from their initial values.
Net trained_net(uint64_t key) {
  seed_torch(key);
  Net net;
  net->train();
  for (int i = 0; i < 3; ++i) net->forward(torch::randn({8, 1, 6, 6}) * 2 + 1);
  return net;
}

TEST(ModuleStateTest, CapturesParametersAndBuffersInStateDictOrder) {
  Net net = trained_net(3);
  Result<TensorBundle> state = module_state(*net);
  ASSERT_TRUE(state.ok()) << state.status().to_string();
  EXPECT_EQ(state->names(), kNetStateNames);
  EXPECT_EQ(state->find("bn.num_batches_tracked")->data<int64_t>()[0], 3);
  EXPECT_EQ(state->find("bn.running_mean")->shape(), (std::vector<int64_t>{4}));
  EXPECT_TRUE(torch::equal(to_torch(*state->find("conv.weight")), net->conv->weight));
}

TEST(ModuleStateTest, PrefixesSelectSubmodules) {
  Net net = trained_net(4);
  Result<TensorBundle> heads = module_state(*net, {"head.", "bn.running"});
  ASSERT_TRUE(heads.ok());
  EXPECT_EQ(heads->names(),
            (std::vector<std::string>{"bn.running_mean", "bn.running_var", "head.0.weight",
                                      "head.1.weight", "head.1.bias"}));
}

TEST(ModuleStateTest, RoundTripThroughTheWireRestoresTheModule) {
  Net source = trained_net(5);
  Result<TensorBundle> state = module_state(*source);
  ASSERT_TRUE(state.ok());
  Result<TensorBundle> received = decode_all(encode_all(*state, /*chunk_bytes=*/100));
  ASSERT_TRUE(received.ok()) << received.status().to_string();

  Net target = trained_net(6);  // different weights and statistics
  ASSERT_TRUE(load_module_state(*target, *received, /*strict=*/true).ok());
  Result<TensorBundle> loaded = module_state(*target);
  ASSERT_TRUE(loaded.ok());
  EXPECT_TRUE(loaded->bitwise_equal(*state));
  source->eval();
  target->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({2, 1, 6, 6});
  EXPECT_TRUE(torch::equal(source->forward(x), target->forward(x)));
  // Loading does not turn parameters into non-leaf tensors.
  EXPECT_TRUE(target->conv->weight.is_leaf());
  EXPECT_TRUE(target->conv->weight.requires_grad());
}

TEST(ModuleStateTest, StrictLoadNamesTheMissingTensor) {
  Net source = trained_net(7);
  Result<TensorBundle> partial = module_state(*source, {"conv.", "head."});
  ASSERT_TRUE(partial.ok());
  Net target = trained_net(8);
  torch::Tensor bn_before = target->bn->running_mean.clone();
  torch::Tensor conv_before = target->conv->weight.detach().clone();

  Status strict = load_module_state(*target, *partial, /*strict=*/true);
  EXPECT_EQ(strict.code(), StatusCode::kNotFound);
  EXPECT_NE(strict.message().find("tensor \"bn.weight\": missing"), std::string::npos)
      << strict.message();
  EXPECT_TRUE(torch::equal(target->conv->weight, conv_before));  // nothing copied

  ASSERT_TRUE(load_module_state(*target, *partial, /*strict=*/false).ok());
  EXPECT_TRUE(torch::equal(target->conv->weight, source->conv->weight));
  EXPECT_TRUE(torch::equal(target->bn->running_mean, bn_before));
}

TEST(ModuleStateTest, UnknownTensorFailsOnlyStrictLoads) {
  Net net = trained_net(9);
  Result<TensorBundle> state = module_state(*net);
  ASSERT_TRUE(state.ok());
  ASSERT_TRUE(state->add_zeros("prototypes", DType::kFloat32, {10, 4}).ok());
  Status strict = load_module_state(*net, *state, /*strict=*/true);
  EXPECT_EQ(strict.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(strict.message().find("tensor \"prototypes\": not in the module"), std::string::npos);
  EXPECT_TRUE(load_module_state(*net, *state, /*strict=*/false).ok());
}

TEST(ModuleStateTest, ShapeOrDTypeMismatchFailsAndLeavesTheModuleUnchanged) {
  Net net = trained_net(10);
  Result<TensorBundle> state = module_state(*net);
  ASSERT_TRUE(state.ok());
  TensorBundle wrong;
  for (const NamedTensor& t : *state) {
    if (t.name() == "head.1.weight") {
      ASSERT_TRUE(wrong.add_zeros(t.name(), DType::kFloat32, {2, 5}).ok());
    } else {
      NamedTensor copy = t.clone();
      std::memset(copy.mutable_bytes(), 0, copy.nbytes());
      ASSERT_TRUE(wrong.add(std::move(copy)).ok());
    }
  }
  torch::Tensor conv_before = net->conv->weight.detach().clone();
  for (bool strict : {true, false}) {
    Status s = load_module_state(*net, wrong, strict);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("tensor \"head.1.weight\": bundle has float32 [2,5], module has "
                               "Float [2,3]"),
              std::string::npos)
        << s.message();
    EXPECT_TRUE(torch::equal(net->conv->weight, conv_before));
  }
  TensorBundle half;
  ASSERT_TRUE(half.add_zeros("conv.bias", DType::kFloat16, {4}).ok());
  Status s = load_module_state(*net, half, /*strict=*/false);
  EXPECT_NE(s.message().find("tensor \"conv.bias\": bundle has float16 [4]"), std::string::npos)
      << s.message();
}

}  // namespace
}  // namespace fedtail
