#include "common/wire/tensor_bundle.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/wire/bundle_checks.h"

namespace fedtail {
namespace {

TEST(DTypeTest, SizesAndNamesRoundTrip) {
  const std::vector<std::pair<DType, size_t>> expected = {
      {DType::kFloat32, 4}, {DType::kFloat64, 8}, {DType::kFloat16, 2}, {DType::kBFloat16, 2},
      {DType::kInt64, 8},   {DType::kInt32, 4},   {DType::kUInt8, 1},   {DType::kBool, 1}};
  for (const auto& [dtype, size] : expected) {
    EXPECT_EQ(dtype_size(dtype), size) << dtype_name(dtype);
    Result<DType> parsed = dtype_from_name(dtype_name(dtype));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, dtype);
  }
  EXPECT_STREQ(dtype_name(DType::kBFloat16), "bfloat16");
  EXPECT_EQ(dtype_from_name("complex64").status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(dtype_is_floating(DType::kFloat16));
  EXPECT_FALSE(dtype_is_floating(DType::kInt64));
}

TEST(DTypeTest, TypedViewsMatchOnlyTheirDType) {
  EXPECT_TRUE(dtype_matches<float>(DType::kFloat32));
  EXPECT_FALSE(dtype_matches<float>(DType::kFloat64));
  EXPECT_TRUE(dtype_matches<uint16_t>(DType::kFloat16));
  EXPECT_TRUE(dtype_matches<uint16_t>(DType::kBFloat16));
  EXPECT_TRUE(dtype_matches<bool>(DType::kBool));
  EXPECT_TRUE(dtype_matches<uint8_t>(DType::kBool));
  EXPECT_FALSE(dtype_matches<int32_t>(DType::kInt64));
}

TEST(HalfConversionTest, RoundTripsExactValuesAndRoundsToNearestEven) {
  for (float v : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.9604644775390625e-08f}) {
    EXPECT_EQ(half_to_float(float_to_half(v)), v) << v;
  }
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00);  // rounds up to +Inf
  EXPECT_EQ(float_to_half(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(std::nanf("")))));
  // 1 + 2^-11 lies exactly between two halves: ties go to the even mantissa (1.0).
  EXPECT_EQ(float_to_half(1.0f + 1.0f / 2048), 0x3c00);
  EXPECT_EQ(float_to_half(1.0f + 3.0f / 2048), 0x3c02);
}

TEST(HalfConversionTest, BFloat16KeepsTheTopBitsRounded) {
  EXPECT_EQ(float_to_bfloat16(1.0f), 0x3f80);
  EXPECT_EQ(bfloat16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(bfloat16_to_float(float_to_bfloat16(-3.0f)), -3.0f);
  EXPECT_TRUE(std::isnan(bfloat16_to_float(float_to_bfloat16(std::nanf("")))));
  EXPECT_TRUE(std::isinf(bfloat16_to_float(float_to_bfloat16(3.4e38f))));
}

TEST(CheckedNumelTest, ValidatesShapes) {
  EXPECT_EQ(*checked_numel(DType::kFloat32, {}), 1);
  EXPECT_EQ(*checked_numel(DType::kFloat32, {2, 3, 4}), 24);
  EXPECT_EQ(*checked_numel(DType::kFloat32, {5, 0}), 0);
  Result<int64_t> negative = checked_numel(DType::kFloat32, {2, -1});
  EXPECT_EQ(negative.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(negative.status().message().find("dimension 1 is negative"), std::string::npos);
  EXPECT_FALSE(checked_numel(DType::kUInt8, {int64_t{1} << 32, int64_t{1} << 32}).ok());
  // Element count fits int64, byte size does not.
  EXPECT_FALSE(checked_numel(DType::kFloat64, {int64_t{1} << 61}).ok());
  EXPECT_FALSE(checked_numel(DType::kFloat32, std::vector<int64_t>(65, 1)).ok());
}

TEST(NamedTensorTest, ZerosAreZeroAlignedAndSized) {
  Result<NamedTensor> t = NamedTensor::zeros("w", DType::kFloat32, {3, 5});
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->name(), "w");
  EXPECT_EQ(t->numel(), 15);
  EXPECT_EQ(t->nbytes(), 60u);
  EXPECT_EQ(t->dim(), 2);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t->bytes()) % NamedTensor::kAlignment, 0u);
  for (int64_t i = 0; i < t->numel(); ++i) EXPECT_EQ(t->data<float>()[i], 0.0f);
}

TEST(NamedTensorTest, ZeroSizeAndScalarTensorsHaveABuffer) {
  Result<NamedTensor> empty = NamedTensor::zeros("e", DType::kInt64, {0, 7});
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->numel(), 0);
  EXPECT_EQ(empty->nbytes(), 0u);
  EXPECT_NE(empty->bytes(), nullptr);
  Result<NamedTensor> scalar = NamedTensor::zeros("s", DType::kFloat64, {});
  ASSERT_TRUE(scalar.ok());
  EXPECT_EQ(scalar->numel(), 1);
  EXPECT_EQ(scalar->nbytes(), 8u);
}

TEST(NamedTensorTest, RejectsBadShapesAndEmptyNames) {
  EXPECT_EQ(NamedTensor::zeros("x", DType::kFloat32, {-3}).status().code(),
            StatusCode::kInvalidArgument);
  Result<NamedTensor> unnamed = NamedTensor::zeros("", DType::kFloat32, {1});
  EXPECT_EQ(unnamed.status().code(), StatusCode::kInvalidArgument);
  Result<NamedTensor> bad = NamedTensor::zeros("layer.w", DType::kFloat32, {-3});
  EXPECT_NE(bad.status().message().find("tensor \"layer.w\""), std::string::npos);
}

TEST(NamedTensorTest, CloneIsDeepAndMovesAreCheap) {
  NamedTensor a = NamedTensor::from_values<int32_t>("a", DType::kInt32, {3}, {1, 2, 3});
  NamedTensor b = a.clone();
  EXPECT_TRUE(a.bitwise_equal(b));
  EXPECT_NE(a.bytes(), b.bytes());
  b.data<int32_t>()[1] = 42;
  EXPECT_EQ(a.data<int32_t>()[1], 2);
  EXPECT_FALSE(a.bitwise_equal(b));
  const uint8_t* buffer = a.bytes();
  NamedTensor c = std::move(a);
  EXPECT_EQ(c.bytes(), buffer);
  EXPECT_EQ(c.data<int32_t>()[2], 3);
}

TEST(NamedTensorTest, ReleaseBufferHandsOverOwnership) {
  NamedTensor a = NamedTensor::from_values<float>("a", DType::kFloat32, {2}, {1.5f, 2.5f});
  const uint8_t* raw = a.bytes();
  AlignedBuffer buffer = std::move(a).release_buffer();
  EXPECT_EQ(buffer.get(), raw);
  EXPECT_EQ(reinterpret_cast<const float*>(buffer.get())[1], 2.5f);
}

TensorBundle make_bundle() {
  TensorBundle b;
  EXPECT_TRUE(b.add(NamedTensor::from_values<float>("backbone.conv.weight", DType::kFloat32, {2, 2},
                                                    {1, 2, 3, 4}))
                  .ok());
  EXPECT_TRUE(
      b.add(NamedTensor::from_values<int64_t>("bn.num_batches_tracked", DType::kInt64, {}, {7}))
          .ok());
  EXPECT_TRUE(b.add(NamedTensor::from_values<float>("heads.classifier.weight", DType::kFloat32,
                                                    {10, 64}, std::vector<float>(640, 0.5f)))
                  .ok());
  b.mutable_metadata()["round"] = 3;
  return b;
}

TEST(TensorBundleTest, KeepsInsertionOrderAndFindsByName) {
  TensorBundle b = make_bundle();
  EXPECT_EQ(b.size(), 3u);
  EXPECT_EQ(b.names(), (std::vector<std::string>{"backbone.conv.weight", "bn.num_batches_tracked",
                                                 "heads.classifier.weight"}));
  ASSERT_NE(b.find("bn.num_batches_tracked"), nullptr);
  EXPECT_EQ(b.find("bn.num_batches_tracked")->data<int64_t>()[0], 7);
  EXPECT_EQ(b.find("nope"), nullptr);
  EXPECT_EQ(b.at(2).name(), "heads.classifier.weight");
  EXPECT_EQ(b.payload_bytes(), 16u + 8u + 2560u);
  EXPECT_EQ(b.metadata()["round"], 3);
}

TEST(TensorBundleTest, RejectsDuplicateNamesAndLeavesBundleUnchanged) {
  TensorBundle b = make_bundle();
  Status s =
      b.add(NamedTensor::from_values<float>("backbone.conv.weight", DType::kFloat32, {1}, {9.0f}));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("\"backbone.conv.weight\": duplicate"), std::string::npos);
  EXPECT_EQ(b.size(), 3u);
  EXPECT_EQ(b.find("backbone.conv.weight")->numel(), 4);
  EXPECT_EQ(b.add_zeros("bn.num_batches_tracked", DType::kInt64, {}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(TensorBundleTest, AddZerosReturnsTheNewTensor) {
  TensorBundle b;
  Result<NamedTensor*> t = b.add_zeros("z", DType::kFloat64, {4});
  ASSERT_TRUE(t.ok());
  (*t)->data<double>()[3] = 2.0;
  EXPECT_EQ(b.find("z")->data<double>()[3], 2.0);
}

TEST(TensorBundleTest, CloneIsDeepAndEqual) {
  TensorBundle a = make_bundle();
  TensorBundle b = a.clone();
  EXPECT_TRUE(a.bitwise_equal(b));
  b.find("backbone.conv.weight")->data<float>()[0] = -1.0f;
  EXPECT_FALSE(a.bitwise_equal(b));
  EXPECT_EQ(a.find("backbone.conv.weight")->data<float>()[0], 1.0f);
  TensorBundle c = a.clone();
  c.mutable_metadata()["round"] = 4;
  EXPECT_FALSE(a.bitwise_equal(c));
}

TEST(TensorBundleTest, MetadataMustBeAnObject) {
  TensorBundle b;
  EXPECT_TRUE(b.metadata().is_object());
  EXPECT_EQ(b.set_metadata(nlohmann::json::array({1, 2})).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(b.set_metadata(nullptr).ok());
  EXPECT_TRUE(b.metadata().is_object());
  EXPECT_TRUE(b.set_metadata({{"strategy", "fedavg"}}).ok());
  EXPECT_EQ(b.metadata()["strategy"], "fedavg");
}

TEST(CheckCompatibleTest, AcceptsSameSpecsInAnyOrder) {
  TensorBundle ref = make_bundle();
  TensorBundle update;
  for (size_t i = ref.size(); i-- > 0;) ASSERT_TRUE(update.add(ref.at(i).clone()).ok());
  EXPECT_TRUE(check_compatible(update, ref).ok());
}

TEST(CheckCompatibleTest, NamesTheTensorWithTheWrongShape) {
  TensorBundle ref;
  ASSERT_TRUE(ref.add_zeros("heads.classifier.weight", DType::kFloat32, {10, 128}).ok());
  TensorBundle update;
  ASSERT_TRUE(update.add_zeros("heads.classifier.weight", DType::kFloat32, {10, 64}).ok());
  Status s = check_compatible(update, ref);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "tensor \"heads.classifier.weight\": shape [10,64] != expected [10,128]");
}

TEST(CheckCompatibleTest, NamesWrongDTypeMissingAndExtraTensors) {
  TensorBundle ref;
  ASSERT_TRUE(ref.add_zeros("fc.bias", DType::kFloat32, {10}).ok());
  TensorBundle half;
  ASSERT_TRUE(half.add_zeros("fc.bias", DType::kFloat16, {10}).ok());
  EXPECT_EQ(check_compatible(half, ref).message(),
            "tensor \"fc.bias\": dtype float16 != expected float32");
  TensorBundle missing;
  EXPECT_EQ(check_compatible(missing, ref).message(),
            "tensor \"fc.bias\": missing (expected float32 [10])");
  TensorBundle extra = ref.clone();
  ASSERT_TRUE(extra.add_zeros("extra", DType::kUInt8, {1}).ok());
  EXPECT_EQ(check_compatible(extra, ref).message(), "tensor \"extra\": not in the reference");
}

// Writes `bits` (a NaN or Inf pattern of `dtype`) at index 1234 of an otherwise finite tensor.
void poison(NamedTensor* t, uint64_t bits) {
  const size_t size = dtype_size(t->dtype());
  std::memcpy(t->mutable_bytes() + 1234 * size, &bits, size);
}

TEST(CheckFiniteTest, AcceptsFiniteAndNonFloatTensors) {
  TensorBundle b = make_bundle();
  ASSERT_TRUE(b.add(NamedTensor::from_values<int32_t>("i", DType::kInt32, {1}, {-1})).ok());
  EXPECT_TRUE(check_finite(b).ok());
}

struct PoisonCase {
  DType dtype;
  uint64_t nan_bits;
  uint64_t inf_bits;
};

class CheckFinitePerDTypeTest : public ::testing::TestWithParam<PoisonCase> {};

TEST_P(CheckFinitePerDTypeTest, FindsNaNAndInfAtTheFirstBadIndex) {
  const PoisonCase& c = GetParam();
  for (uint64_t bits : {c.nan_bits, c.inf_bits}) {
    TensorBundle b;
    Result<NamedTensor*> t = b.add_zeros("layer.weight", c.dtype, {100, 100});
    ASSERT_TRUE(t.ok());
    EXPECT_TRUE(check_finite(b).ok());
    poison(*t, bits);
    // A second bad value later must not be the one reported.
    std::memcpy((*t)->mutable_bytes() + 9000 * dtype_size(c.dtype), &bits, dtype_size(c.dtype));
    Status s = check_finite(b);
    EXPECT_EQ(s.code(), StatusCode::kCorruption) << dtype_name(c.dtype);
    EXPECT_NE(s.message().find("tensor \"layer.weight\""), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("at index 1234"), std::string::npos) << s.message();
    const char* word = bits == c.nan_bits ? "nan" : "inf";
    EXPECT_NE(s.message().find(word), std::string::npos) << s.message();
  }
}

INSTANTIATE_TEST_SUITE_P(FloatTypes, CheckFinitePerDTypeTest,
                         ::testing::Values(PoisonCase{DType::kFloat32, 0x7fc00000u, 0xff800000u},
                                           PoisonCase{DType::kFloat64, 0x7ff8000000000000u,
                                                      0x7ff0000000000000u},
                                           PoisonCase{DType::kFloat16, 0x7e00u, 0x7c00u},
                                           PoisonCase{DType::kBFloat16, 0x7fc0u, 0xff80u}),
                         [](const ::testing::TestParamInfo<PoisonCase>& info) {
                           return std::string(dtype_name(info.param.dtype));
                         });

TEST(CheckFiniteTest, LargestFiniteHalfIsFine) {
  NamedTensor t =
      NamedTensor::from_values<uint16_t>("h", DType::kFloat16, {3}, {0x7bff, 0xfbff, 0x0001});
  EXPECT_TRUE(check_finite(t).ok());
}

}  // namespace
}  // namespace fedtail
