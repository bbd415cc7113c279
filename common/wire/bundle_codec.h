// The chunked wire codec of TensorBundle (common/wire/proto/fedtail/v1/bundle.proto).
//
// A bundle travels as a stream of BundleChunk messages: chunk 0 carries the header (tensor specs in
// bundle order, metadata JSON, payload size, digest of the payload, number of data chunks, and a
// digest of the header itself (XXH3-128, common/wire/payload_digest.h), so that corruption anywhere
// is detected), chunks 1..num_chunks carry consecutive non-empty slices of the payload, the
// tensors' little-endian bytes concatenated in header order. A slice may span tensor boundaries. No
// message-size limit applies to the bundle size, and neither side ever holds a second copy of the
// whole payload:
//   - BundleEncoder slices the tensors' own buffers into each chunk;
//   - BundleDecoder copies each chunk's bytes straight into the destination tensors, hashing them
//     on the way, and validates everything a hostile or broken peer could get wrong.
//
// Typical use (gRPC streaming):
//   BundleEncoder enc(bundle);                  BundleDecoder dec(limits);
//   v1::BundleChunk chunk;                      while (reader->Read(&chunk)) {
//   while (enc.next(&chunk)) writer->Write(chunk);  FEDTAIL_RETURN_IF_ERROR(dec.add(chunk)); }
//                                               FEDTAIL_ASSIGN_OR_RETURN(TensorBundle b,
//                                               dec.finish());
//
// Encoder and decoder objects are not thread-safe; distinct objects may run on distinct threads.
#ifndef FEDTAIL_COMMON_WIRE_BUNDLE_CODEC_H_
#define FEDTAIL_COMMON_WIRE_BUNDLE_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/base/status.h"
#include "common/wire/payload_digest.h"
#include "common/wire/tensor_bundle.h"
#include "fedtail/v1/bundle.pb.h"

namespace fedtail {

// Default payload bytes per data chunk (1 MiB): far below gRPC's 4 MiB message limit, large enough
// that per-message overhead is negligible.
constexpr size_t kDefaultChunkBytes = size_t{1} << 20;

// DType <-> wire enum. dtype_from_proto takes the raw enum number, since a peer may send values
// this build does not know: kCorruption for DTYPE_UNSPECIFIED and unknown values.
v1::DType dtype_to_proto(DType dtype);
Result<DType> dtype_from_proto(int wire_value);

// Digest of the payload of `bundle` (its tensors' bytes concatenated in order): what the header
// carries. Compute it once to encode the same bundle many times (see BundleEncoder).
PayloadDigest payload_digest(const TensorBundle& bundle);

// Digest of the canonical encoding of `header` (see bundle.proto), ignoring its header_digest
// field: the value the encoder stores there and the decoder checks.
PayloadDigest header_digest(const v1::BundleHeader& header);

// Produces the chunks of one bundle, in order.
//
// Lifetime: the encoder borrows `bundle`, which must outlive it and must not be modified (tensors
// added or removed, bytes or metadata changed) until next() has returned false; bytes changed in
// between reach the receiver as a digest mismatch (kCorruption there).
class BundleEncoder {
 public:
  // Hashes the whole payload (one pass over the bundle's bytes) before returning. Preconditions
  // (FEDTAIL_CHECK): chunk_bytes > 0; bundle.metadata() is an object or null.
  explicit BundleEncoder(const TensorBundle& bundle, size_t chunk_bytes = kDefaultChunkBytes);
  // Same, with the payload digest computed earlier by payload_digest(bundle): no hashing pass. For
  // sending one bundle (e.g. the global model) to many clients.
  BundleEncoder(const TensorBundle& bundle, size_t chunk_bytes,
                const PayloadDigest& payload_digest);

  BundleEncoder(const BundleEncoder&) = delete;
  BundleEncoder& operator=(const BundleEncoder&) = delete;

  // Stores the next chunk in *out and returns true, or returns false when every chunk has been
  // produced. *out may be reused from call to call: its data buffer's capacity is kept.
  bool next(v1::BundleChunk* out);

  // Number of data chunks after the header: ceil(payload_bytes / chunk_bytes).
  uint64_t num_data_chunks() const { return num_data_chunks_; }
  uint64_t payload_bytes() const { return payload_bytes_; }
  const PayloadDigest& payload_digest() const { return digest_; }

 private:
  void fill_header(v1::BundleChunk* out) const;

  // Constant after construction.
  const TensorBundle& bundle_;
  const size_t chunk_bytes_;
  const uint64_t payload_bytes_;
  const uint64_t num_data_chunks_;
  PayloadDigest digest_;

  // Position of the next chunk.
  uint64_t next_index_ = 0;
  size_t tensor_ = 0;           // tensor holding the next payload byte
  uint64_t tensor_offset_ = 0;  // offset of that byte within the tensor
};

// Limits a decoder enforces on what a peer declares, before allocating anything for it.
struct DecodeLimits {
  // Largest accepted payload (sum of tensor sizes), in bytes. Default 4 GiB; services facing
  // untrusted peers should set the size of the model they expect (plus slack).
  uint64_t max_payload_bytes = uint64_t{4} << 30;
  // Largest accepted number of tensors. Default 65536.
  uint64_t max_tensors = uint64_t{1} << 16;
  // Largest accepted metadata JSON text, in bytes. Default 16 MiB.
  uint64_t max_metadata_bytes = uint64_t{16} << 20;
  // Longest accepted tensor name, in bytes. Default 1024.
  uint64_t max_name_bytes = 1024;
  // Deepest accepted nesting of arrays/objects in the metadata. Default 64. (nlohmann::json copies
  // and dumps recurse: a peer must not be able to send a value that overflows the stack later.)
  uint64_t max_metadata_depth = 64;
  // When set, the header must list exactly the tensors of `expected` (in any order), each with its
  // dtype and shape; only their names, dtypes and shapes are read. Checked before anything is
  // allocated: a peer cannot make the decoder reserve more than the model it was asked for. Null
  // (the default): any tensors within the bounds above.
  std::shared_ptr<const TensorBundle> expected;
};

// Rebuilds one bundle from its chunks.
//
// Errors are sticky: after add() fails, every later add() and finish() returns the same Status.
// All errors name the chunk index or the tensor. kCorruption for a malformed stream: a chunk before
// the header or a header twice, an out-of-order/duplicate/extra chunk index, a bad tensor spec
// (unknown dtype, negative or overflowing shape, duplicate or empty name, sizes that do not sum to
// payload_bytes), a digest that is not 16 bytes, metadata that is not a JSON object, an empty data
// chunk, data beyond the declared payload, truncation, a header or payload digest mismatch.
// kResourceExhausted when the header exceeds a DecodeLimits bound (nothing is allocated then) or
// the tensors cannot be allocated. kInvalidArgument when the header is not DecodeLimits::expected:
// "header: not the expected update: tensor "x": missing (expected float32 [10,64])", "...: tensor
// "x": float64 [10,64] != expected float32 [10,64]", "...: tensor "y": not expected" (nothing is
// allocated then either).
class BundleDecoder {
 public:
  explicit BundleDecoder(DecodeLimits limits = {});

  BundleDecoder(const BundleDecoder&) = delete;
  BundleDecoder& operator=(const BundleDecoder&) = delete;

  // Consumes one chunk; the header chunk allocates the bundle's tensors (after validating it), each
  // data chunk is copied into them. `chunk` is not retained.
  Status add(const v1::BundleChunk& chunk);

  // The decoded bundle, once the header and every declared data chunk have arrived and the payload
  // digest matches. kCorruption when no header or too few bytes arrived (truncation) or on a digest
  // mismatch; kFailedPrecondition when called again after a success.
  Result<TensorBundle> finish();

  bool header_received() const { return header_received_; }
  // True when the header and all declared data chunks have arrived (finish() still checks the
  // digest).
  bool complete() const;
  // Declared payload size (0 before the header) and payload bytes received so far.
  uint64_t payload_bytes() const { return payload_bytes_; }
  uint64_t bytes_received() const { return bytes_received_; }

 private:
  Status fail(Status status);
  Status add_header(const v1::BundleHeader& header);
  Status add_data(uint64_t index, const std::string& data);

  // Constant after construction.
  const DecodeLimits limits_;

  Status status_;  // sticky error
  bool header_received_ = false;
  bool finished_ = false;
  TensorBundle bundle_;
  PayloadHasher hasher_;
  PayloadDigest expected_digest_{};
  uint64_t payload_bytes_ = 0;
  uint64_t num_data_chunks_ = 0;
  uint64_t next_index_ = 0;
  uint64_t bytes_received_ = 0;
  size_t tensor_ = 0;           // tensor receiving the next payload byte
  uint64_t tensor_offset_ = 0;  // offset of that byte within the tensor
};

// All chunks of `bundle` at once (tests, small bundles). Same contract as BundleEncoder.
std::vector<v1::BundleChunk> encode_all(const TensorBundle& bundle,
                                        size_t chunk_bytes = kDefaultChunkBytes);
// Decodes a complete chunk sequence; errors as BundleDecoder.
Result<TensorBundle> decode_all(const std::vector<v1::BundleChunk>& chunks,
                                const DecodeLimits& limits = {});

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_WIRE_BUNDLE_CODEC_H_
