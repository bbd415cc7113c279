#include "common/wire/bundle_codec.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "common/base/json_reader.h"
#include "common/security/crypto.h"

namespace fedtail {

// The payload is little-endian on the wire and copied as raw memory on both sides.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "fedtail's bundle codec assumes a little-endian host");

v1::DType dtype_to_proto(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return v1::DTYPE_FLOAT32;
    case DType::kFloat64:
      return v1::DTYPE_FLOAT64;
    case DType::kFloat16:
      return v1::DTYPE_FLOAT16;
    case DType::kBFloat16:
      return v1::DTYPE_BFLOAT16;
    case DType::kInt64:
      return v1::DTYPE_INT64;
    case DType::kInt32:
      return v1::DTYPE_INT32;
    case DType::kUInt8:
      return v1::DTYPE_UINT8;
    case DType::kBool:
      return v1::DTYPE_BOOL;
  }
  return v1::DTYPE_UNSPECIFIED;
}

Result<DType> dtype_from_proto(int wire_value) {
  switch (wire_value) {
    case v1::DTYPE_FLOAT32:
      return DType::kFloat32;
    case v1::DTYPE_FLOAT64:
      return DType::kFloat64;
    case v1::DTYPE_FLOAT16:
      return DType::kFloat16;
    case v1::DTYPE_BFLOAT16:
      return DType::kBFloat16;
    case v1::DTYPE_INT64:
      return DType::kInt64;
    case v1::DTYPE_INT32:
      return DType::kInt32;
    case v1::DTYPE_UINT8:
      return DType::kUInt8;
    case v1::DTYPE_BOOL:
      return DType::kBool;
    default:
      break;
  }
  return Status::Corruption("unknown dtype " + std::to_string(wire_value));
}

PayloadDigest payload_digest(const TensorBundle& bundle) {
  PayloadHasher hasher;
  for (const NamedTensor& t : bundle) hasher.update(t.bytes(), t.nbytes());
  return hasher.finish();
}

namespace {

void hash_u64(PayloadHasher* h, uint64_t v) {
  uint8_t bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(v >> (8 * i));
  h->update(bytes, sizeof(bytes));
}

void hash_bytes(PayloadHasher* h, const std::string& s) {
  hash_u64(h, s.size());
  h->update(s.data(), s.size());
}

}  // namespace

PayloadDigest header_digest(const v1::BundleHeader& header) {
  PayloadHasher h;
  hash_u64(&h, static_cast<uint64_t>(header.tensors_size()));
  for (const v1::TensorSpec& spec : header.tensors()) {
    hash_bytes(&h, spec.name());
    const uint32_t dtype = static_cast<uint32_t>(spec.dtype());
    uint8_t dtype_bytes[4];
    for (int i = 0; i < 4; ++i) dtype_bytes[i] = static_cast<uint8_t>(dtype >> (8 * i));
    h.update(dtype_bytes, sizeof(dtype_bytes));
    hash_u64(&h, static_cast<uint64_t>(spec.shape_size()));
    for (int64_t d : spec.shape()) hash_u64(&h, static_cast<uint64_t>(d));
  }
  hash_bytes(&h, header.metadata_json());
  hash_u64(&h, header.payload_bytes());
  hash_u64(&h, header.num_chunks());
  h.update(header.payload_digest());
  return h.finish();
}

// ---- BundleEncoder ----

namespace {

uint64_t ceil_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

}  // namespace

BundleEncoder::BundleEncoder(const TensorBundle& bundle, size_t chunk_bytes)
    : BundleEncoder(bundle, chunk_bytes, fedtail::payload_digest(bundle)) {}

BundleEncoder::BundleEncoder(const TensorBundle& bundle, size_t chunk_bytes,
                             const PayloadDigest& digest)
    : bundle_(bundle),
      chunk_bytes_(chunk_bytes),
      payload_bytes_(bundle.payload_bytes()),
      num_data_chunks_(chunk_bytes == 0 ? 0 : ceil_div(bundle.payload_bytes(), chunk_bytes)),
      digest_(digest) {
  FEDTAIL_CHECK(chunk_bytes > 0);
  FEDTAIL_CHECK(bundle.metadata().is_object() || bundle.metadata().is_null());
}

void BundleEncoder::fill_header(v1::BundleChunk* out) const {
  out->Clear();
  out->set_index(0);
  v1::BundleHeader* header = out->mutable_header();
  header->mutable_tensors()->Reserve(static_cast<int>(bundle_.size()));
  for (const NamedTensor& t : bundle_) {
    v1::TensorSpec* spec = header->add_tensors();
    spec->set_name(t.name());
    spec->set_dtype(dtype_to_proto(t.dtype()));
    spec->mutable_shape()->Add(t.shape().begin(), t.shape().end());
  }
  const nlohmann::json& metadata = bundle_.metadata();
  // `replace` turns invalid UTF-8 into U+FFFD instead of throwing.
  header->set_metadata_json(metadata.is_null()
                                ? std::string("{}")
                                : metadata.dump(-1, ' ', /*ensure_ascii=*/false,
                                                nlohmann::json::error_handler_t::replace));
  header->set_payload_bytes(payload_bytes_);
  header->set_payload_digest(digest_.data(), digest_.size());
  header->set_num_chunks(num_data_chunks_);
  const PayloadDigest sealed = fedtail::header_digest(*header);
  header->set_header_digest(sealed.data(), sealed.size());
}

bool BundleEncoder::next(v1::BundleChunk* out) {
  if (next_index_ == 0) {
    fill_header(out);
    ++next_index_;
    return true;
  }
  if (next_index_ > num_data_chunks_) return false;

  const uint64_t sent = (next_index_ - 1) * chunk_bytes_;
  const size_t length =
      static_cast<size_t>(std::min<uint64_t>(chunk_bytes_, payload_bytes_ - sent));
  out->set_index(next_index_);
  // mutable_data() switches the oneof to `data`, keeping the string (and its capacity) when the
  // previous chunk in *out was a data chunk too.
  std::string* data = out->mutable_data();
  data->clear();
  data->reserve(length);
  size_t remaining = length;
  while (remaining > 0) {
    const NamedTensor& t = bundle_.at(tensor_);
    const uint64_t available = t.nbytes() - tensor_offset_;
    if (available == 0) {  // zero-size tensor, or this one is exhausted
      ++tensor_;
      tensor_offset_ = 0;
      continue;
    }
    const size_t take = static_cast<size_t>(std::min<uint64_t>(available, remaining));
    data->append(reinterpret_cast<const char*>(t.bytes() + tensor_offset_), take);
    tensor_offset_ += take;
    remaining -= take;
  }
  ++next_index_;
  return true;
}

// ---- BundleDecoder ----

BundleDecoder::BundleDecoder(DecodeLimits limits) : limits_(limits) {}

Status BundleDecoder::fail(Status status) {
  status_ = status.with_context("bundle");
  return status_;
}

bool BundleDecoder::complete() const {
  return header_received_ && next_index_ == num_data_chunks_ + 1;
}

Status BundleDecoder::add(const v1::BundleChunk& chunk) {
  if (!status_.ok()) return status_;
  if (finished_) return Status::FailedPrecondition("bundle: add() after a successful finish()");
  const uint64_t index = chunk.index();
  const std::string where = "chunk " + std::to_string(index);
  switch (chunk.body_case()) {
    case v1::BundleChunk::kHeader:
      if (header_received_) return fail(Status::Corruption(where + ": header received twice"));
      if (index != 0) {
        return fail(Status::Corruption(where + ": header chunk must have index 0"));
      }
      return add_header(chunk.header());
    case v1::BundleChunk::kData:
      if (!header_received_) {
        return fail(Status::Corruption(where + ": data before the header chunk (index 0)"));
      }
      return add_data(index, chunk.data());
    default:
      return fail(Status::Corruption(where + ": neither header nor data"));
  }
}

Status BundleDecoder::add_header(const v1::BundleHeader& header) {
  // Sizes first, against the limits, before anything is allocated.
  if (header.payload_bytes() > limits_.max_payload_bytes) {
    return fail(Status::ResourceExhausted(
        "header: payload of " + std::to_string(header.payload_bytes()) +
        " bytes exceeds the limit of " + std::to_string(limits_.max_payload_bytes)));
  }
  if (static_cast<uint64_t>(header.tensors_size()) > limits_.max_tensors) {
    return fail(Status::ResourceExhausted("header: " + std::to_string(header.tensors_size()) +
                                          " tensors exceed the limit of " +
                                          std::to_string(limits_.max_tensors)));
  }
  if (header.metadata_json().size() > limits_.max_metadata_bytes) {
    return fail(Status::ResourceExhausted(
        "header: metadata of " + std::to_string(header.metadata_json().size()) +
        " bytes exceeds the limit of " + std::to_string(limits_.max_metadata_bytes)));
  }
  // Then integrity: nothing below may trust a corrupted header.
  if (header.header_digest().size() != kPayloadDigestBytes) {
    return fail(Status::Corruption("header: header_digest has " +
                                   std::to_string(header.header_digest().size()) +
                                   " bytes (expected 16)"));
  }
  const PayloadDigest computed = fedtail::header_digest(header);
  if (std::memcmp(computed.data(), header.header_digest().data(), kPayloadDigestBytes) != 0) {
    return fail(Status::Corruption("header: header digest mismatch (computed " +
                                   to_hex(computed.data(), computed.size()) + ", header declares " +
                                   to_hex(header.header_digest()) + ")"));
  }
  if (header.payload_digest().size() != kPayloadDigestBytes) {
    return fail(Status::Corruption("header: payload_digest has " +
                                   std::to_string(header.payload_digest().size()) +
                                   " bytes (expected 16)"));
  }
  const uint64_t payload = header.payload_bytes();
  const uint64_t chunks = header.num_chunks();
  // Every data chunk is non-empty, so there are between 1 and payload_bytes of them (none for an
  // empty payload).
  if ((payload == 0) != (chunks == 0) || chunks > payload) {
    return fail(Status::Corruption("header: " + std::to_string(chunks) +
                                   " data chunks cannot carry a payload of " +
                                   std::to_string(payload) + " bytes"));
  }

  // Tensor specs: names, dtypes, shapes, and that the sizes add up, still without allocating.
  struct Spec {
    DType dtype;
    std::vector<int64_t> shape;
  };
  std::vector<Spec> specs;
  specs.reserve(header.tensors_size());
  std::unordered_set<std::string> names;
  uint64_t total = 0;
  for (int i = 0; i < header.tensors_size(); ++i) {
    const v1::TensorSpec& spec = header.tensors(i);
    if (spec.name().empty()) {
      return fail(Status::Corruption("header: tensor #" + std::to_string(i) + " has no name"));
    }
    if (spec.name().size() > limits_.max_name_bytes) {
      return fail(Status::Corruption("header: tensor #" + std::to_string(i) + ": name of " +
                                     std::to_string(spec.name().size()) +
                                     " bytes exceeds the limit of " +
                                     std::to_string(limits_.max_name_bytes)));
    }
    const std::string where = "header: tensor \"" + spec.name() + "\"";
    if (!names.insert(spec.name()).second) {
      return fail(Status::Corruption(where + ": duplicate name"));
    }
    Result<DType> dtype = dtype_from_proto(static_cast<int>(spec.dtype()));
    if (!dtype.ok()) return fail(dtype.status().with_context(where));
    std::vector<int64_t> shape(spec.shape().begin(), spec.shape().end());
    Result<int64_t> numel = checked_numel(*dtype, shape);
    if (!numel.ok()) return fail(Status::Corruption(where + ": " + numel.status().message()));
    const uint64_t nbytes = static_cast<uint64_t>(*numel) * dtype_size(*dtype);
    if (__builtin_add_overflow(total, nbytes, &total) || total > payload) {
      return fail(Status::Corruption(where + ": tensor sizes exceed the declared payload of " +
                                     std::to_string(payload) + " bytes"));
    }
    specs.push_back({*dtype, std::move(shape)});
  }
  if (total != payload) {
    return fail(Status::Corruption("header: tensor sizes sum to " + std::to_string(total) +
                                   " bytes, not the declared payload of " +
                                   std::to_string(payload)));
  }
  if (limits_.expected) {
    // Same order of complaints as check_compatible (bundle_checks.h): the expected tensors first,
    // so that a renamed tensor reads as the one that is missing.
    const std::string where = "header: not the expected update: tensor \"";
    std::unordered_map<std::string, int> index;
    index.reserve(specs.size());
    for (int i = 0; i < header.tensors_size(); ++i) index.emplace(header.tensors(i).name(), i);
    for (const NamedTensor& want : *limits_.expected) {
      auto it = index.find(want.name());
      const std::string expected_spec =
          std::string(dtype_name(want.dtype())) + " " + shape_to_string(want.shape());
      if (it == index.end()) {
        return fail(Status::InvalidArgument(where + want.name() + "\": missing (expected " +
                                            expected_spec + ")"));
      }
      const Spec& got = specs[it->second];
      if (got.dtype != want.dtype() || got.shape != want.shape()) {
        return fail(Status::InvalidArgument(
            where + want.name() + "\": " + dtype_name(got.dtype) + " " +
            shape_to_string(got.shape) + " != expected " + expected_spec));
      }
    }
    if (specs.size() != limits_.expected->size()) {
      for (int i = 0; i < header.tensors_size(); ++i) {
        if (!limits_.expected->contains(header.tensors(i).name())) {
          return fail(Status::InvalidArgument(where + header.tensors(i).name() +
                                              "\": not expected"));
        }
      }
    }
  }

  nlohmann::json metadata = nlohmann::json::object();
  if (json_nesting_depth(header.metadata_json()) >
      static_cast<int64_t>(limits_.max_metadata_depth)) {
    return fail(Status::ResourceExhausted("header: metadata nesting exceeds the limit of " +
                                          std::to_string(limits_.max_metadata_depth) + " levels"));
  }
  if (!header.metadata_json().empty()) {
    metadata = nlohmann::json::parse(header.metadata_json(), /*cb=*/nullptr,
                                     /*allow_exceptions=*/false);
    if (metadata.is_discarded()) {
      return fail(Status::Corruption("header: metadata_json is not valid JSON"));
    }
    if (!metadata.is_object()) {
      return fail(
          Status::Corruption(std::string("header: metadata_json must be a JSON object (got ") +
                             metadata.type_name() + ")"));
    }
  }

  // Allocate. Tensors are left uninitialised: the data chunks overwrite every byte, and finish()
  // refuses to return a bundle before they have.
  for (int i = 0; i < header.tensors_size(); ++i) {
    Result<NamedTensor> t = NamedTensor::uninitialized(header.tensors(i).name(), specs[i].dtype,
                                                       std::move(specs[i].shape));
    if (!t.ok()) return fail(t.status().with_context("header"));
    Status added = bundle_.add(std::move(t).value());
    if (!added.ok()) return fail(Status::Internal(added.message()));
  }
  Status set = bundle_.set_metadata(std::move(metadata));
  if (!set.ok()) return fail(Status::Internal(set.message()));

  std::memcpy(expected_digest_.data(), header.payload_digest().data(), kPayloadDigestBytes);
  payload_bytes_ = payload;
  num_data_chunks_ = chunks;
  header_received_ = true;
  next_index_ = 1;
  return Status::OK();
}

Status BundleDecoder::add_data(uint64_t index, const std::string& data) {
  const std::string where = "chunk " + std::to_string(index);
  if (index != next_index_) {
    if (index == 0) return fail(Status::Corruption(where + ": data chunk with the header's index"));
    if (index < next_index_) {
      return fail(Status::Corruption(where + ": duplicate chunk (expected index " +
                                     std::to_string(next_index_) + ")"));
    }
    return fail(Status::Corruption(where + ": out of order (expected index " +
                                   std::to_string(next_index_) + ")"));
  }
  if (index > num_data_chunks_) {
    return fail(Status::Corruption(where + ": beyond the " + std::to_string(num_data_chunks_) +
                                   " data chunks the header declared"));
  }
  if (data.empty()) return fail(Status::Corruption(where + ": empty data chunk"));
  if (data.size() > payload_bytes_ - bytes_received_) {
    return fail(Status::Corruption(where + ": data extends past the declared payload of " +
                                   std::to_string(payload_bytes_) + " bytes (" +
                                   std::to_string(bytes_received_ + data.size()) + " received)"));
  }
  hasher_.update(data.data(), data.size());
  const char* src = data.data();
  size_t remaining = data.size();
  while (remaining > 0) {
    NamedTensor& t = bundle_.at(tensor_);
    const uint64_t room = t.nbytes() - tensor_offset_;
    if (room == 0) {  // zero-size tensor, or this one is full
      ++tensor_;
      tensor_offset_ = 0;
      continue;
    }
    const size_t take = static_cast<size_t>(std::min<uint64_t>(room, remaining));
    std::memcpy(t.mutable_bytes() + tensor_offset_, src, take);
    tensor_offset_ += take;
    src += take;
    remaining -= take;
  }
  bytes_received_ += data.size();
  ++next_index_;
  return Status::OK();
}

Result<TensorBundle> BundleDecoder::finish() {
  if (!status_.ok()) return status_;
  if (finished_) return Status::FailedPrecondition("bundle: finish() called twice");
  if (!header_received_) return fail(Status::Corruption("truncated: no header chunk received"));
  if (bytes_received_ != payload_bytes_ || next_index_ != num_data_chunks_ + 1) {
    return fail(Status::Corruption("truncated: received " + std::to_string(bytes_received_) +
                                   " of " + std::to_string(payload_bytes_) + " payload bytes (" +
                                   std::to_string(next_index_ - 1) + " of " +
                                   std::to_string(num_data_chunks_) + " data chunks)"));
  }
  const PayloadDigest digest = hasher_.finish();
  if (digest != expected_digest_) {
    return fail(Status::Corruption("payload digest mismatch: computed " +
                                   to_hex(digest.data(), digest.size()) + ", header declares " +
                                   to_hex(expected_digest_.data(), expected_digest_.size())));
  }
  finished_ = true;
  return std::move(bundle_);
}

// ---- Convenience ----

std::vector<v1::BundleChunk> encode_all(const TensorBundle& bundle, size_t chunk_bytes) {
  BundleEncoder encoder(bundle, chunk_bytes);
  std::vector<v1::BundleChunk> chunks;
  chunks.reserve(static_cast<size_t>(encoder.num_data_chunks() + 1));
  v1::BundleChunk chunk;
  while (encoder.next(&chunk)) {
    chunks.push_back(std::move(chunk));
    chunk.Clear();
  }
  return chunks;
}

Result<TensorBundle> decode_all(const std::vector<v1::BundleChunk>& chunks,
                                const DecodeLimits& limits) {
  BundleDecoder decoder(limits);
  for (const v1::BundleChunk& chunk : chunks) FEDTAIL_RETURN_IF_ERROR(decoder.add(chunk));
  return decoder.finish();
}

}  // namespace fedtail
