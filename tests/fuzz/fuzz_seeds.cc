// fuzz_seeds: writes the valid seed inputs of the bundle targets into a corpus directory.
//
//   build-fuzz/fuzz_seeds tests/fuzz/corpus
//
// writes <corpus>/bundle_stream/seed-* and <corpus>/bundle_file/seed-* (overwriting files of those
// names, leaving every other file alone). Rerun it when the wire or file format changes; the
// run_config seeds are copies of simulations/configs/*.json and need no generator.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "common/wire/bundle_file.h"
#include "common/wire/tensor_bundle.h"
#include "tests/fuzz/fuzz_targets.h"

namespace fedtail::fuzz {
namespace {

namespace fs = std::filesystem;

TensorBundle empty_bundle() { return TensorBundle(); }

// A small classifier, as a client would upload it.
TensorBundle small_model() {
  TensorBundle b;
  FEDTAIL_CHECK(b.add(NamedTensor::from_values<float>(
                          "fc.weight", DType::kFloat32, {4, 3},
                          {0.1f, -0.2f, 0.3f, 1.5f, -2.5f, 0.0f, 7.f, 8.f, -9.f, 1e-3f, 2e3f, 3.f}))
                    .ok());
  FEDTAIL_CHECK(b.add(NamedTensor::from_values<float>("fc.bias", DType::kFloat32, {4},
                                                      {0.f, 1.f, -1.f, 0.5f}))
                    .ok());
  FEDTAIL_CHECK(
      b.add(NamedTensor::from_values<int64_t>("bn.num_batches_tracked", DType::kInt64, {}, {42}))
          .ok());
  b.mutable_metadata()["round"] = 3;
  b.mutable_metadata()["strategy"] = "fedavg";
  b.mutable_metadata()["metrics"] = {{"loss", 0.25}, {"accuracy", 0.875}};
  return b;
}

// One tensor of every dtype, an empty one and a scalar, non-finite floats, nested metadata.
TensorBundle every_dtype() {
  TensorBundle b;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  FEDTAIL_CHECK(
      b.add(NamedTensor::from_values<float>("f32", DType::kFloat32, {2}, {nan, 1.f})).ok());
  FEDTAIL_CHECK(
      b.add(NamedTensor::from_values<double>("f64", DType::kFloat64, {1, 2}, {1e300, -0.0})).ok());
  FEDTAIL_CHECK(b.add(NamedTensor::from_values<uint16_t>("f16", DType::kFloat16, {3},
                                                         {0x3c00, 0x7c00, 0x0001}))
                    .ok());
  FEDTAIL_CHECK(
      b.add(NamedTensor::from_values<uint16_t>("bf16", DType::kBFloat16, {2}, {0x3f80, 0x7fc0}))
          .ok());
  FEDTAIL_CHECK(b.add(NamedTensor::from_values<int64_t>("i64", DType::kInt64, {0, 5}, {})).ok());
  FEDTAIL_CHECK(
      b.add(NamedTensor::from_values<int32_t>("i32", DType::kInt32, {2}, {-7, 1 << 30})).ok());
  FEDTAIL_CHECK(
      b.add(NamedTensor::from_values<uint8_t>("u8", DType::kUInt8, {2, 2}, {0, 1, 254, 255})).ok());
  FEDTAIL_CHECK(b.add(NamedTensor::from_values<uint8_t>("flag", DType::kBool, {}, {1})).ok());
  b.mutable_metadata()["nested"] = {{"list", {1, 2.5, "x", nullptr, true}}, {"obj", {{"k", {}}}}};
  b.mutable_metadata()["text"] = "caf\xc3\xa9 \"quoted\" [not a bracket]";
  return b;
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  FEDTAIL_CHECK(out.good());
  std::printf("%s (%zu bytes)\n", path.c_str(), bytes.size());
}

std::string file_bytes(const TensorBundle& bundle, const fs::path& scratch) {
  const fs::path path = scratch / "seed.bundle";
  const Status written = write_bundle_file(path.string(), bundle);
  FEDTAIL_CHECK(written.ok());
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  fs::remove(path);
  return bytes;
}

int run(const fs::path& corpus) {
  const fs::path streams = corpus / "bundle_stream";
  const fs::path files = corpus / "bundle_file";
  fs::create_directories(streams);
  fs::create_directories(files);
  const fs::path scratch =
      fs::temp_directory_path() / ("fedtail-fuzz-seeds-" + std::to_string(::getpid()));
  fs::create_directories(scratch);

  const uint8_t kRepair = kFixHeaderDigest | kFixPayloadDigest;
  // Flag bits 2-4 pick the re-encoding chunk size: index 1 is 3 bytes, 4 is 1 KiB.
  write_file(streams / "seed-empty", bundle_stream_input(empty_bundle(), kDefaultChunkBytes, 0));
  write_file(streams / "seed-small-model",
             bundle_stream_input(small_model(), /*chunk_bytes=*/16, /*flags=*/4 << 2));
  write_file(streams / "seed-small-model-repair",
             bundle_stream_input(small_model(), /*chunk_bytes=*/100, kRepair | (1 << 2)));
  write_file(streams / "seed-every-dtype",
             bundle_stream_input(every_dtype(), /*chunk_bytes=*/7, /*flags=*/1 << 2));
  write_file(streams / "seed-every-dtype-repair",
             bundle_stream_input(every_dtype(), /*chunk_bytes=*/1024, kRepair));

  write_file(files / "seed-empty", file_bytes(empty_bundle(), scratch));
  write_file(files / "seed-small-model", file_bytes(small_model(), scratch));
  write_file(files / "seed-every-dtype", file_bytes(every_dtype(), scratch));
  fs::remove_all(scratch);

  // Run every seed through its target once: the invariants must hold on valid input.
  for (const fs::path& dir : {streams, files}) {
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.path().filename().string().rfind("seed-", 0) != 0) continue;
      std::ifstream in(entry.path(), std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
      const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
      if (dir == streams) {
        fuzz_bundle_stream(data, bytes.size());
      } else {
        fuzz_bundle_file(data, bytes.size());
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace fedtail::fuzz

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (e.g. tests/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  return fedtail::fuzz::run(argv[1]);
}
