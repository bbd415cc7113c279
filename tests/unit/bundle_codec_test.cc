#include "common/wire/bundle_codec.h"

#include <google/protobuf/stubs/logging.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/base/rng.h"

namespace fedtail {
namespace {

// A bundle with every dtype, a scalar and zero-size tensors at the start, middle and end.
TensorBundle make_mixed_bundle() {
  TensorBundle b;
  auto add = [&b](NamedTensor t) { EXPECT_TRUE(b.add(std::move(t)).ok()); };
  add(NamedTensor::zeros("empty.first", DType::kFloat32, {0}).value());
  std::vector<float> f(37);
  for (size_t i = 0; i < f.size(); ++i) f[i] = 0.25f * static_cast<float>(i) - 3.0f;
  add(NamedTensor::from_values<float>("conv.weight", DType::kFloat32, {37}, f));
  add(NamedTensor::from_values<double>("scale", DType::kFloat64, {}, {3.141592653589793}));
  add(NamedTensor::from_values<uint16_t>("half", DType::kFloat16, {2, 3},
                                         {0x3c00, 0xc000, 0x0001, 0x7bff, 0x8000, 0x3555}));
  add(NamedTensor::from_values<uint16_t>("bf", DType::kBFloat16, {3}, {0x3f80, 0x4049, 0xbf00}));
  add(NamedTensor::zeros("empty.middle", DType::kInt64, {4, 0, 2}).value());
  add(NamedTensor::from_values<int64_t>("bn.num_batches_tracked", DType::kInt64, {}, {123456789}));
  add(NamedTensor::from_values<int32_t>("labels", DType::kInt32, {5}, {0, -1, 7, 1 << 30, 42}));
  add(NamedTensor::from_values<uint8_t>("bytes", DType::kUInt8, {3, 3},
                                        {0, 1, 2, 3, 4, 5, 250, 255, 128}));
  add(NamedTensor::from_values<bool>("mask", DType::kBool, {4}, {true, false, false, true}));
  add(NamedTensor::zeros("empty.last", DType::kUInt8, {0}).value());
  b.mutable_metadata()["strategy"] = "fedavg";
  b.mutable_metadata()["round"] = 12;
  b.mutable_metadata()["metrics"] = {{"loss", 0.5}, {"classes", {1, 2, 3}}};
  return b;
}

Status decode_status(const std::vector<v1::BundleChunk>& chunks, const DecodeLimits& limits = {}) {
  return decode_all(chunks, limits).status();
}

void expect_error(const Status& s, StatusCode code, const std::string& fragment) {
  EXPECT_EQ(s.code(), code) << s.to_string();
  EXPECT_NE(s.message().find(fragment), std::string::npos)
      << "\"" << s.message() << "\" lacks \"" << fragment << "\"";
}

class RoundTripTest : public ::testing::TestWithParam<size_t> {};

TEST_P(RoundTripTest, DecodesWhatWasEncoded) {
  const size_t chunk_bytes = GetParam();
  TensorBundle original = make_mixed_bundle();
  std::vector<v1::BundleChunk> chunks = encode_all(original, chunk_bytes);
  const uint64_t payload = original.payload_bytes();
  const uint64_t expected_chunks = (payload + chunk_bytes - 1) / chunk_bytes;
  ASSERT_EQ(chunks.size(), expected_chunks + 1);
  const v1::BundleHeader& header = chunks[0].header();
  EXPECT_EQ(header.payload_bytes(), payload);
  EXPECT_EQ(header.num_chunks(), expected_chunks);
  EXPECT_EQ(header.tensors_size(), static_cast<int>(original.size()));
  const PayloadDigest digest = payload_digest(original);
  EXPECT_EQ(header.payload_digest(), std::string(digest.begin(), digest.end()));
  for (size_t i = 1; i < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i].index(), i);
    EXPECT_LE(chunks[i].data().size(), chunk_bytes);
    EXPECT_GT(chunks[i].data().size(), 0u);
  }
  Result<TensorBundle> decoded = decode_all(chunks);
  ASSERT_TRUE(decoded.ok()) << decoded.status().to_string();
  EXPECT_TRUE(decoded->bitwise_equal(original));
  EXPECT_EQ(decoded->names(), original.names());
  EXPECT_EQ(decoded->metadata()["metrics"]["classes"][2], 3);
  EXPECT_EQ(decoded->find("labels")->data<int32_t>()[3], 1 << 30);
}

INSTANTIATE_TEST_SUITE_P(ChunkSizes, RoundTripTest, ::testing::Values(1, 3, 7, 64, 100, 1 << 20),
                         [](const ::testing::TestParamInfo<size_t>& info) {
                           return "bytes_" + std::to_string(info.param);
                         });

TEST(BundleCodecTest, EmptyBundleIsOneHeaderChunk) {
  TensorBundle empty;
  empty.mutable_metadata()["note"] = "nothing";
  std::vector<v1::BundleChunk> chunks = encode_all(empty);
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].header().num_chunks(), 0u);
  Result<TensorBundle> decoded = decode_all(chunks);
  ASSERT_TRUE(decoded.ok()) << decoded.status().to_string();
  EXPECT_EQ(decoded->size(), 0u);
  EXPECT_EQ(decoded->metadata()["note"], "nothing");
}

TEST(BundleCodecTest, ZeroSizeTensorsOnlyHaveNoDataChunks) {
  TensorBundle b;
  ASSERT_TRUE(b.add_zeros("a", DType::kFloat32, {0, 5}).ok());
  ASSERT_TRUE(b.add_zeros("b", DType::kInt64, {3, 0}).ok());
  std::vector<v1::BundleChunk> chunks = encode_all(b, 4);
  ASSERT_EQ(chunks.size(), 1u);
  Result<TensorBundle> decoded = decode_all(chunks);
  ASSERT_TRUE(decoded.ok()) << decoded.status().to_string();
  EXPECT_EQ(decoded->find("b")->shape(), (std::vector<int64_t>{3, 0}));
  EXPECT_TRUE(decoded->bitwise_equal(b));
}

TEST(BundleCodecTest, StreamingWithAReusedMessageAndPrecomputedDigest) {
  TensorBundle original = make_mixed_bundle();
  const PayloadDigest digest = payload_digest(original);
  BundleEncoder encoder(original, 16, digest);
  EXPECT_EQ(encoder.payload_digest(), digest);
  BundleDecoder decoder;
  v1::BundleChunk chunk;
  int count = 0;
  while (encoder.next(&chunk)) {
    ASSERT_TRUE(decoder.add(chunk).ok());
    ++count;
    EXPECT_EQ(decoder.complete(), count == static_cast<int>(encoder.num_data_chunks()) + 1);
  }
  EXPECT_FALSE(encoder.next(&chunk));
  EXPECT_EQ(decoder.bytes_received(), original.payload_bytes());
  Result<TensorBundle> decoded = decoder.finish();
  ASSERT_TRUE(decoded.ok()) << decoded.status().to_string();
  EXPECT_TRUE(decoded->bitwise_equal(original));
  EXPECT_EQ(decoder.finish().status().code(), StatusCode::kFailedPrecondition);
}

TEST(BundleCodecTest, InvalidUtf8InMetadataDoesNotThrow) {
  TensorBundle b;
  b.mutable_metadata()["name"] = std::string("bad\xff\xfe");
  Result<TensorBundle> decoded = decode_all(encode_all(b));
  ASSERT_TRUE(decoded.ok()) << decoded.status().to_string();
  EXPECT_TRUE(decoded->metadata()["name"].is_string());
}

// ---- Corruption ----

TEST(BundleDecoderTest, FlippedPayloadByteIsADigestMismatch) {
  std::vector<v1::BundleChunk> chunks = encode_all(make_mixed_bundle(), 32);
  (*chunks[3].mutable_data())[5] ^= 0x01;
  expect_error(decode_status(chunks), StatusCode::kCorruption, "payload digest mismatch");
}

TEST(BundleDecoderTest, CorruptedHeaderIsADigestMismatch) {
  TensorBundle b;
  ASSERT_TRUE(b.add_zeros("w", DType::kFloat32, {2, 3}).ok());
  b.mutable_metadata()["round"] = 1;
  std::vector<v1::BundleChunk> transposed = encode_all(b);
  v1::TensorSpec* spec = transposed[0].mutable_header()->mutable_tensors(0);
  spec->set_shape(0, 3);
  spec->set_shape(1, 2);
  expect_error(decode_status(transposed), StatusCode::kCorruption, "header digest mismatch");

  std::vector<v1::BundleChunk> edited = encode_all(b);
  edited[0].mutable_header()->set_metadata_json("{\"round\":2}");
  expect_error(decode_status(edited), StatusCode::kCorruption, "header digest mismatch");

  std::vector<v1::BundleChunk> unsealed = encode_all(b);
  unsealed[0].mutable_header()->clear_header_digest();
  expect_error(decode_status(unsealed), StatusCode::kCorruption, "header_digest has 0 bytes");
}

// Random bit flips anywhere in the serialized stream: the decoder either rejects the stream or
// returns exactly the original bundle (a flip can land in bytes protobuf ignores); it never
// crashes and never returns something else.
TEST(BundleDecoderTest, RandomBitFlipsNeverYieldADifferentBundle) {
  const TensorBundle original = make_mixed_bundle();
  std::vector<std::string> wire;
  for (const v1::BundleChunk& c : encode_all(original, 16)) wire.push_back(c.SerializeAsString());
  // Flips in strings make protobuf log "invalid UTF-8" for each rejected parse: keep them quiet.
  google::protobuf::LogHandler* previous_handler = google::protobuf::SetLogHandler(nullptr);
  Rng rng = Rng::derive(/*seed=*/1, "bundle_codec_test.bit_flips");
  int rejected = 0;
  constexpr int kTrials = 2000;
  for (int trial = 0; trial < kTrials; ++trial) {
    std::vector<std::string> mutated = wire;
    const int flips = 1 + static_cast<int>(rng.uniform_int(3));
    for (int f = 0; f < flips; ++f) {
      std::string& m = mutated[rng.uniform_int(mutated.size())];
      if (m.empty()) continue;
      m[rng.uniform_int(m.size())] ^= static_cast<char>(1u << rng.uniform_int(8));
    }
    BundleDecoder decoder;
    Status s;
    for (const std::string& m : mutated) {
      v1::BundleChunk chunk;
      if (!chunk.ParseFromString(m)) {
        s = Status::Corruption("unparseable");
        break;
      }
      s = decoder.add(chunk);
      if (!s.ok()) break;
    }
    if (s.ok()) {
      Result<TensorBundle> r = decoder.finish();
      if (r.ok()) {
        EXPECT_TRUE(r->bitwise_equal(original)) << "trial " << trial;
        continue;
      }
      s = r.status();
    }
    EXPECT_TRUE(s.code() == StatusCode::kCorruption || s.code() == StatusCode::kResourceExhausted)
        << s.to_string();
    ++rejected;
  }
  google::protobuf::SetLogHandler(previous_handler);
  EXPECT_GT(rejected, kTrials * 9 / 10);
}

TEST(BundleDecoderTest, TruncatedStreamIsCorruption) {
  std::vector<v1::BundleChunk> chunks = encode_all(make_mixed_bundle(), 32);
  chunks.pop_back();
  expect_error(decode_status(chunks), StatusCode::kCorruption, "truncated");
  chunks.resize(1);
  expect_error(decode_status(chunks), StatusCode::kCorruption, "truncated: received 0 of");
  expect_error(decode_status({}), StatusCode::kCorruption, "no header");
}

TEST(BundleDecoderTest, OutOfOrderChunkIsNamed) {
  std::vector<v1::BundleChunk> chunks = encode_all(make_mixed_bundle(), 32);
  std::swap(chunks[1], chunks[2]);
  expect_error(decode_status(chunks), StatusCode::kCorruption,
               "chunk 2: out of order (expected index 1)");
}

TEST(BundleDecoderTest, DuplicateChunkIsNamed) {
  std::vector<v1::BundleChunk> chunks = encode_all(make_mixed_bundle(), 32);
  chunks.insert(chunks.begin() + 3, chunks[2]);
  expect_error(decode_status(chunks), StatusCode::kCorruption,
               "chunk 2: duplicate chunk (expected index 3)");
}

TEST(BundleDecoderTest, MissingHeaderIsCorruption) {
  std::vector<v1::BundleChunk> chunks = encode_all(make_mixed_bundle(), 32);
  chunks.erase(chunks.begin());
  expect_error(decode_status(chunks), StatusCode::kCorruption, "chunk 1: data before the header");
}

TEST(BundleDecoderTest, SecondHeaderIsCorruption) {
  std::vector<v1::BundleChunk> chunks = encode_all(make_mixed_bundle(), 32);
  chunks.insert(chunks.begin() + 2, chunks[0]);
  expect_error(decode_status(chunks), StatusCode::kCorruption, "header received twice");
}

TEST(BundleDecoderTest, DataBeyondTheDeclaredSizeIsCorruption) {
  std::vector<v1::BundleChunk> chunks = encode_all(make_mixed_bundle(), 32);
  chunks.back().mutable_data()->push_back('x');
  expect_error(decode_status(chunks), StatusCode::kCorruption, "extends past the declared payload");

  std::vector<v1::BundleChunk> extra = encode_all(make_mixed_bundle(), 32);
  v1::BundleChunk more;
  more.set_index(extra.size());
  more.set_data("zz");
  extra.push_back(more);
  expect_error(decode_status(extra), StatusCode::kCorruption, "beyond the");
}

TEST(BundleDecoderTest, EmptyOrBodilessChunksAreCorruption) {
  std::vector<v1::BundleChunk> chunks = encode_all(make_mixed_bundle(), 32);
  chunks[1].mutable_data()->clear();
  expect_error(decode_status(chunks), StatusCode::kCorruption, "chunk 1: empty data chunk");
  v1::BundleChunk nothing;
  expect_error(decode_status({nothing}), StatusCode::kCorruption, "neither header nor data");
}

TEST(BundleDecoderTest, ErrorsAreSticky) {
  std::vector<v1::BundleChunk> chunks = encode_all(make_mixed_bundle(), 32);
  BundleDecoder decoder;
  ASSERT_TRUE(decoder.add(chunks[0]).ok());
  Status first = decoder.add(chunks[2]);
  EXPECT_EQ(first.code(), StatusCode::kCorruption);
  EXPECT_EQ(decoder.add(chunks[1]).message(), first.message());
  EXPECT_EQ(decoder.finish().status().message(), first.message());
}

// Recomputes the header digest after a test edited the header.
v1::BundleChunk seal(v1::BundleChunk chunk) {
  const PayloadDigest d = header_digest(chunk.header());
  chunk.mutable_header()->set_header_digest(d.data(), d.size());
  return chunk;
}

// A header for one float32 tensor of `shape` (sealed; tests that edit it seal it again).
v1::BundleChunk header_chunk(const std::vector<int64_t>& shape, uint64_t payload_bytes) {
  v1::BundleChunk chunk;
  chunk.set_index(0);
  v1::BundleHeader* h = chunk.mutable_header();
  v1::TensorSpec* spec = h->add_tensors();
  spec->set_name("w");
  spec->set_dtype(v1::DTYPE_FLOAT32);
  for (int64_t d : shape) spec->add_shape(d);
  h->set_payload_bytes(payload_bytes);
  h->set_num_chunks(payload_bytes == 0 ? 0 : 1);
  h->set_payload_digest(std::string(16, '\0'));
  h->set_metadata_json("{}");
  return seal(chunk);
}

TEST(BundleDecoderTest, OversizedPayloadIsRejectedBeforeAllocation) {
  DecodeLimits limits;
  limits.max_payload_bytes = 1 << 20;
  // 4 TiB declared: allocating it would fail differently (or exhaust the machine).
  const int64_t n = int64_t{1} << 40;
  BundleDecoder decoder(limits);
  Status s = decoder.add(header_chunk({n}, static_cast<uint64_t>(n) * 4));
  expect_error(s, StatusCode::kResourceExhausted, "exceeds the limit of 1048576");
  EXPECT_FALSE(decoder.header_received());
}

TEST(BundleDecoderTest, TheExpectedUpdateIsCheckedBeforeAllocation) {
  TensorBundle model;
  ASSERT_TRUE(model.add_zeros("w", DType::kFloat32, {4, 3}).ok());
  ASSERT_TRUE(model.add_zeros("b", DType::kFloat32, {4}).ok());
  ASSERT_TRUE(model.add_zeros("bn.num_batches_tracked", DType::kInt64, {}).ok());
  DecodeLimits limits;
  limits.max_payload_bytes = uint64_t{1} << 42;
  limits.expected = std::make_shared<const TensorBundle>(model.clone());

  // The model itself, and the same tensors in another order, pass.
  EXPECT_TRUE(decode_status(encode_all(model), limits).ok());
  TensorBundle reordered;
  for (const char* name : {"bn.num_batches_tracked", "b", "w"}) {
    ASSERT_TRUE(reordered.add(model.find(name)->clone()).ok());
  }
  EXPECT_TRUE(decode_status(encode_all(reordered), limits).ok());

  // A header declaring "w" as 1 TiB: refused as the wrong shape, not as an allocation failure (it
  // is within max_payload_bytes, and allocating it would fail or exhaust the machine).
  const int64_t n = int64_t{1} << 38;
  BundleDecoder decoder(limits);
  expect_error(decoder.add(header_chunk({n}, static_cast<uint64_t>(n) * 4)),
               StatusCode::kInvalidArgument,
               "not the expected update: tensor \"w\": float32 [274877906944] != expected "
               "float32 [4,3]");
  EXPECT_FALSE(decoder.header_received());

  TensorBundle renamed;
  ASSERT_TRUE(renamed.add_zeros("w.renamed", DType::kFloat32, {4, 3}).ok());
  ASSERT_TRUE(renamed.add(model.find("b")->clone()).ok());
  ASSERT_TRUE(renamed.add(model.find("bn.num_batches_tracked")->clone()).ok());
  expect_error(decode_status(encode_all(renamed), limits), StatusCode::kInvalidArgument,
               "tensor \"w\": missing (expected float32 [4,3])");

  TensorBundle extra = model.clone();
  TensorBundle as_double;
  ASSERT_TRUE(as_double.add_zeros("w", DType::kFloat64, {4, 3}).ok());
  for (const char* name : {"b", "bn.num_batches_tracked"}) {
    ASSERT_TRUE(as_double.add(model.find(name)->clone()).ok());
  }
  expect_error(decode_status(encode_all(as_double), limits), StatusCode::kInvalidArgument,
               "tensor \"w\": float64 [4,3] != expected float32 [4,3]");

  ASSERT_TRUE(extra.add_zeros("extra", DType::kUInt8, {1}).ok());
  expect_error(decode_status(encode_all(extra), limits), StatusCode::kInvalidArgument,
               "tensor \"extra\": not expected");

  TensorBundle fewer;
  ASSERT_TRUE(fewer.add(model.find("w")->clone()).ok());
  expect_error(decode_status(encode_all(fewer), limits), StatusCode::kInvalidArgument,
               "tensor \"b\": missing");
}

TEST(BundleDecoderTest, TooManyTensorsOrTooMuchMetadataIsResourceExhausted) {
  DecodeLimits limits;
  limits.max_tensors = 2;
  limits.max_metadata_bytes = 10;
  TensorBundle three;
  for (const char* name : {"a", "b", "c"})
    ASSERT_TRUE(three.add_zeros(name, DType::kUInt8, {1}).ok());
  expect_error(decode_status(encode_all(three), limits), StatusCode::kResourceExhausted,
               "3 tensors exceed the limit of 2");
  TensorBundle chatty;
  chatty.mutable_metadata()["long"] = "0123456789";
  expect_error(decode_status(encode_all(chatty), limits), StatusCode::kResourceExhausted,
               "metadata of");
}

TEST(BundleDecoderTest, DeeplyNestedMetadataIsRejected) {
  const int depth = 100000;
  v1::BundleChunk h = header_chunk({1}, 4);
  h.mutable_header()->set_metadata_json("{\"a\":" + std::string(depth, '[') +
                                        std::string(depth, ']') + "}");
  expect_error(decode_status({seal(h)}), StatusCode::kResourceExhausted,
               "metadata nesting exceeds the limit of 64");
  // Brackets inside strings do not count.
  TensorBundle b;
  b.mutable_metadata()["text"] = std::string(1000, '[') + "\"{";
  b.mutable_metadata()["nested"] = {{"a", {{"b", {1, {2, {3}}}}}}};
  Result<TensorBundle> decoded = decode_all(encode_all(b));
  ASSERT_TRUE(decoded.ok()) << decoded.status().to_string();
  EXPECT_EQ(decoded->metadata(), b.metadata());
}

TEST(BundleDecoderTest, UnknownDTypeIsCorruptionNamingTheTensor) {
  for (int bad : {0, 99}) {
    v1::BundleChunk h = header_chunk({1}, 4);
    h.mutable_header()->mutable_tensors(0)->set_dtype(static_cast<v1::DType>(bad));
    expect_error(decode_status({seal(h)}), StatusCode::kCorruption,
                 "tensor \"w\": unknown dtype " + std::to_string(bad));
  }
}

TEST(BundleDecoderTest, BadShapesAreCorruptionNamingTheTensor) {
  expect_error(decode_status({header_chunk({int64_t{1} << 40, int64_t{1} << 40}, 16)}),
               StatusCode::kCorruption, "tensor \"w\": shape [1099511627776,1099511627776]");
  expect_error(decode_status({header_chunk({int64_t{1} << 62}, 16)}), StatusCode::kCorruption,
               "byte size overflows");
  expect_error(decode_status({header_chunk({4, -1}, 16)}), StatusCode::kCorruption,
               "dimension 1 is negative");
}

TEST(BundleDecoderTest, SizesMustSumToThePayload) {
  expect_error(decode_status({header_chunk({4}, 20)}), StatusCode::kCorruption,
               "sum to 16 bytes, not the declared payload of 20");
  expect_error(decode_status({header_chunk({8}, 16)}), StatusCode::kCorruption,
               "exceed the declared payload");
}

TEST(BundleDecoderTest, MalformedHeaderFieldsAreCorruption) {
  v1::BundleChunk dup = header_chunk({2}, 16);
  *dup.mutable_header()->add_tensors() = dup.header().tensors(0);
  expect_error(decode_status({seal(dup)}), StatusCode::kCorruption, "tensor \"w\": duplicate name");

  v1::BundleChunk unnamed = header_chunk({1}, 4);
  unnamed.mutable_header()->mutable_tensors(0)->clear_name();
  expect_error(decode_status({seal(unnamed)}), StatusCode::kCorruption, "tensor #0 has no name");

  v1::BundleChunk short_digest = header_chunk({1}, 4);
  short_digest.mutable_header()->set_payload_digest("abc");
  expect_error(decode_status({seal(short_digest)}), StatusCode::kCorruption,
               "payload_digest has 3 bytes");

  v1::BundleChunk chunks = header_chunk({1}, 4);
  chunks.mutable_header()->set_num_chunks(5);
  expect_error(decode_status({seal(chunks)}), StatusCode::kCorruption,
               "5 data chunks cannot carry");

  v1::BundleChunk array_meta = header_chunk({1}, 4);
  array_meta.mutable_header()->set_metadata_json("[1,2]");
  expect_error(decode_status({seal(array_meta)}), StatusCode::kCorruption, "must be a JSON object");

  v1::BundleChunk bad_json = header_chunk({1}, 4);
  bad_json.mutable_header()->set_metadata_json("{\"a\":");
  expect_error(decode_status({seal(bad_json)}), StatusCode::kCorruption, "not valid JSON");

  v1::BundleChunk moved = header_chunk({1}, 4);
  moved.set_index(3);
  expect_error(decode_status({moved}), StatusCode::kCorruption,
               "chunk 3: header chunk must have index 0");
}

TEST(DTypeProtoTest, MapsEveryDType) {
  for (DType d : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16,
                  DType::kInt64, DType::kInt32, DType::kUInt8, DType::kBool}) {
    Result<DType> back = dtype_from_proto(dtype_to_proto(d));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, d);
  }
}

}  // namespace
}  // namespace fedtail
