#include "tools/bench/data_sections.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/base/rng.h"
#include "common/security/crypto.h"
#include "common/wire/bundle_codec.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/weighted_average.h"

namespace fedtail::bench {
namespace {

constexpr double kGB = 1e9;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Runs `pass` (which processes `bytes` bytes) at least 3 times and for `min_seconds`, after one
// untimed warm-up; returns bytes per second.
Result<double> bytes_per_s(double bytes, double min_seconds, const std::function<Status()>& pass) {
  FEDTAIL_RETURN_IF_ERROR(pass());
  int passes = 0;
  const auto start = std::chrono::steady_clock::now();
  double seconds = 0;
  do {
    FEDTAIL_RETURN_IF_ERROR(pass());
    ++passes;
    seconds = seconds_since(start);
  } while (passes < 3 || seconds < min_seconds);
  return bytes * passes / seconds;
}

// Appends a float32 tensor of `shape` filled with N(0, 0.05) values, and for BatchNorm (`bn`) its
// running statistics and int64 counter as a LibTorch state_dict has them.
Status add_filled(TensorBundle& bundle, const std::string& name, std::vector<int64_t> shape,
                  Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor * t, bundle.add_zeros(name, DType::kFloat32, shape));
  float* w = t->data<float>();
  for (int64_t i = 0; i < t->numel(); ++i) w[i] = static_cast<float>(rng.normal() * 0.05);
  return Status::OK();
}

Status add_batch_norm(TensorBundle& bundle, const std::string& prefix, int64_t channels, Rng& rng) {
  for (const char* part : {"weight", "bias", "running_mean", "running_var"}) {
    FEDTAIL_RETURN_IF_ERROR(add_filled(bundle, prefix + "." + part, {channels}, rng));
  }
  return bundle.add_zeros(prefix + ".num_batches_tracked", DType::kInt64, {}).status();
}

// The state_dict shapes of the CIFAR ResNet-18 (common/learning/models.h: 3×3 stem, four stages of
// two basic blocks, 10 classes): 11.17 M float32 values in 122 tensors, 44.7 MB.
Result<TensorBundle> resnet18_bundle(uint64_t seed) {
  Rng rng = Rng::derive(seed, "bench.resnet18_bundle");
  TensorBundle b;
  FEDTAIL_RETURN_IF_ERROR(add_filled(b, "conv1.weight", {64, 3, 3, 3}, rng));
  FEDTAIL_RETURN_IF_ERROR(add_batch_norm(b, "bn1", 64, rng));
  int64_t in = 64;
  const int64_t widths[] = {64, 128, 256, 512};
  for (int stage = 0; stage < 4; ++stage) {
    const int64_t out = widths[stage];
    for (int block = 0; block < 2; ++block) {
      const std::string p = "layer" + std::to_string(stage + 1) + "." + std::to_string(block);
      FEDTAIL_RETURN_IF_ERROR(add_filled(b, p + ".conv1.weight", {out, in, 3, 3}, rng));
      FEDTAIL_RETURN_IF_ERROR(add_batch_norm(b, p + ".bn1", out, rng));
      FEDTAIL_RETURN_IF_ERROR(add_filled(b, p + ".conv2.weight", {out, out, 3, 3}, rng));
      FEDTAIL_RETURN_IF_ERROR(add_batch_norm(b, p + ".bn2", out, rng));
      if (in != out) {
        FEDTAIL_RETURN_IF_ERROR(add_filled(b, p + ".shortcut.0.weight", {out, in, 1, 1}, rng));
        FEDTAIL_RETURN_IF_ERROR(add_batch_norm(b, p + ".shortcut.1", out, rng));
      }
      in = out;
    }
  }
  FEDTAIL_RETURN_IF_ERROR(add_filled(b, "fc.weight", {10, 512}, rng));
  FEDTAIL_RETURN_IF_ERROR(add_filled(b, "fc.bias", {10}, rng));
  return b;
}

// One float32 tensor of `floats` values: the shape of the small models (CNN: ~0.5 M floats).
Result<TensorBundle> flat_bundle(int64_t floats, uint64_t seed) {
  Rng rng = Rng::derive(seed, "bench.flat_bundle");
  TensorBundle b;
  FEDTAIL_RETURN_IF_ERROR(add_filled(b, "w", {floats}, rng));
  return b;
}

double mb(double bytes) { return bytes / 1e6; }

nlohmann::json row(const std::string& measure, const std::string& model, double bytes, int updates,
                   double rate, double memcpy_rate) {
  return {{"measure", measure},
          {"model", model},
          {"update_mb", mb(bytes)},
          {"updates", updates},
          {"gb_per_s", rate / kGB},
          {"memcpy_gb_per_s", memcpy_rate / kGB},
          {"ratio_to_memcpy", rate / memcpy_rate}};
}

}  // namespace

double memcpy_bytes_per_s(size_t bytes, double min_seconds) {
  std::vector<uint8_t> src(bytes, 1);
  std::vector<uint8_t> dst(bytes, 0);
  std::memcpy(dst.data(), src.data(), bytes);  // warm-up
  int copies = 0;
  const auto start = std::chrono::steady_clock::now();
  double seconds = 0;
  do {
    src[static_cast<size_t>(copies) % bytes] = static_cast<uint8_t>(copies);
    std::memcpy(dst.data(), src.data(), bytes);
    ++copies;
    seconds = seconds_since(start);
  } while (copies < 3 || seconds < min_seconds);
  // Keep the copies observable.
  volatile uint8_t sink = dst[bytes / 2];
  (void)sink;
  return static_cast<double>(bytes) * copies / seconds;
}

Result<nlohmann::json> run_aggregation(const BenchContext& ctx) {
  struct Case {
    std::string model;
    int updates;
    std::function<Result<TensorBundle>(uint64_t)> make;
  };
  const std::vector<Case> cases = {
      {"resnet18 (11.2 M floats)", ctx.quick ? 3 : 10, resnet18_bundle},
      {"cnn-sized (0.5 M floats)", ctx.quick ? 10 : 100,
       [](uint64_t seed) { return flat_bundle(500'000, seed); }},
  };
  const double min_seconds = ctx.quick ? 0.3 : 2.0;
  nlohmann::json rows = nlohmann::json::array();
  nlohmann::json section = nlohmann::json::object();
  for (const Case& c : cases) {
    // Distinct updates (up to 10 of them, reused cyclically beyond that), as a round folds them.
    const int distinct = std::min(c.updates, 10);
    std::vector<TensorBundle> updates;
    for (int k = 0; k < distinct; ++k) {
      FEDTAIL_ASSIGN_OR_RETURN(TensorBundle u, c.make(static_cast<uint64_t>(k + 1)));
      updates.push_back(std::move(u));
    }
    auto reference = std::make_shared<const TensorBundle>(updates[0].clone());
    const double update_bytes = static_cast<double>(reference->payload_bytes());
    const double round_bytes = update_bytes * c.updates;
    const double memcpy_rate =
        memcpy_bytes_per_s(static_cast<size_t>(update_bytes), min_seconds / 2);
    // FedAvg's fold before 2026-11-30 (fresh accumulators every round, one update at a time),
    // then the two changes one after the other: accumulators reset and reused (as FedAvgServer
    // does from its second round), and updates folded in groups (add_all; fold_group_size: pairs
    // for ResNet-18, fours for the CNN).
    struct Variant {
      const char* measure;
      const char* key_suffix;
      bool reuse;
      int group;
    };
    for (const Variant& v :
         {Variant{"fresh accumulators, one update at a time (before)", "_before", false, 1},
          Variant{"reused accumulators, one update at a time", "_one_at_a_time", true, 1},
          Variant{"reused accumulators, groups (FedAvg's fold)", "", true, 0}}) {
      // FedAvg's group size for this model (strategies/weighted_average.h).
      const int group =
          v.group > 0
              ? v.group
              : static_cast<int>(strategies::fold_group_size(static_cast<uint64_t>(update_bytes)));
      FEDTAIL_ASSIGN_OR_RETURN(strategies::WeightedAverage reused,
                               strategies::WeightedAverage::create(reference));
      FEDTAIL_ASSIGN_OR_RETURN(
          double rate, bytes_per_s(round_bytes, min_seconds, [&]() -> Status {
            std::optional<strategies::WeightedAverage> fresh;
            if (v.reuse) {
              FEDTAIL_RETURN_IF_ERROR(reused.reset(reference));
            } else {
              FEDTAIL_ASSIGN_OR_RETURN(fresh, strategies::WeightedAverage::create(reference));
            }
            strategies::WeightedAverage& avg = v.reuse ? reused : *fresh;
            for (int k = 0; k < c.updates; k += group) {
              std::vector<strategies::WeightedAverage::Weighted> batch;
              for (int j = k; j < std::min(c.updates, k + group); ++j) {
                batch.push_back({&updates[static_cast<size_t>(j % distinct)], 10 + j});
              }
              FEDTAIL_RETURN_IF_ERROR(avg.add_all(batch));
            }
            return avg.finish().status();
          }));
      spdlog::info("aggregation {} x {}, {}: {:.2f} GB/s (memcpy {:.2f} GB/s, ratio {:.2f})",
                   c.model, c.updates, v.measure, rate / kGB, memcpy_rate / kGB,
                   rate / memcpy_rate);
      rows.push_back(row(v.measure, c.model, update_bytes, c.updates, rate, memcpy_rate));
      rows.back()["group"] = group;
      if (&c == &cases.front()) {
        section["ratio_to_memcpy" + std::string(v.key_suffix)] = rate / memcpy_rate;
        section["gb_per_s" + std::string(v.key_suffix)] = rate / kGB;
        section["memcpy_gb_per_s"] = memcpy_rate / kGB;
      }
    }
  }
  section["rows"] = rows;
  return section;
}

Result<nlohmann::json> run_serialization(const BenchContext& ctx) {
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle bundle,
                           ctx.quick ? flat_bundle(2'000'000, 1) : resnet18_bundle(1));
  bundle.mutable_metadata()["round"] = 1;
  const std::string model = ctx.quick ? "flat (2 M floats)" : "resnet18 (11.2 M floats)";
  const double bytes = static_cast<double>(bundle.payload_bytes());
  const double min_seconds = ctx.quick ? 0.3 : 2.0;
  const double memcpy_rate = memcpy_bytes_per_s(static_cast<size_t>(bytes), min_seconds / 2);

  // The chunks once, for the decode-only figure.
  std::vector<v1::BundleChunk> chunks = encode_all(bundle);
  const PayloadDigest digest = payload_digest(bundle);

  struct Part {
    std::string measure;
    std::function<Status()> pass;
  };
  v1::BundleChunk reused;
  const std::vector<Part> parts = {
      {"round trip (encode + decode, chunk by chunk)",
       [&]() -> Status {
         BundleEncoder encoder(bundle);
         BundleDecoder decoder;
         while (encoder.next(&reused)) FEDTAIL_RETURN_IF_ERROR(decoder.add(reused));
         return decoder.finish().status();
       }},
      {"encode only (hash + slice into chunks)",
       [&]() -> Status {
         BundleEncoder encoder(bundle);
         while (encoder.next(&reused)) {
         }
         return Status::OK();
       }},
      {"encode only, digest known (slice into chunks)",
       [&]() -> Status {
         BundleEncoder encoder(bundle, kDefaultChunkBytes, digest);
         while (encoder.next(&reused)) {
         }
         return Status::OK();
       }},
      {"decode only (validate + copy + hash)",
       [&]() -> Status {
         BundleDecoder decoder;
         for (const auto& chunk : chunks) FEDTAIL_RETURN_IF_ERROR(decoder.add(chunk));
         return decoder.finish().status();
       }},
      {"payload digest alone (XXH3-128)",
       [&]() -> Status {
         PayloadDigest d = payload_digest(bundle);
         return d == digest ? Status::OK() : Status::Internal("digest differs between passes");
       }},
      {"SHA-256 of the payload (the digest until 2026-11-30)",
       [&]() -> Status {
         Sha256 hasher;
         for (const NamedTensor& t : bundle) hasher.update(t.bytes(), t.nbytes());
         Sha256Digest d = hasher.finish();
         return d[0] == 0 && d[1] == 0 && d[2] == 0 ? Status::Internal("unlikely digest")
                                                    : Status::OK();
       }},
  };
  nlohmann::json rows = nlohmann::json::array();
  nlohmann::json section = nlohmann::json::object();
  for (const Part& part : parts) {
    FEDTAIL_ASSIGN_OR_RETURN(double rate, bytes_per_s(bytes, min_seconds, part.pass));
    spdlog::info("serialization {}: {:.2f} GB/s (memcpy {:.2f} GB/s, ratio {:.2f})", part.measure,
                 rate / kGB, memcpy_rate / kGB, rate / memcpy_rate);
    rows.push_back(row(part.measure, model, bytes, 1, rate, memcpy_rate));
    if (&part == &parts.front()) {
      section["ratio_to_memcpy"] = rate / memcpy_rate;
      section["gb_per_s"] = rate / kGB;
      section["memcpy_gb_per_s"] = memcpy_rate / kGB;
    }
    if (&part == &parts[parts.size() - 2]) section["digest_gb_per_s"] = rate / kGB;
    if (&part == &parts.back()) section["sha256_gb_per_s"] = rate / kGB;
  }
  section["rows"] = rows;
  return section;
}

}  // namespace fedtail::bench
