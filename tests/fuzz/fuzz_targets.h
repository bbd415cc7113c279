// Fuzz targets: torch-free entry points that take arbitrary bytes, run one of fedtail's decoders or
// parsers on them, and check invariants.
//
// Each target returns 0 (libFuzzer's convention) for every input: rejecting an input with a Status
// is the expected outcome, not a failure. A bug shows as an abort instead: a broken invariant
// (FEDTAIL_CHECK), an escaping exception (std::terminate), or a sanitizer report. The libFuzzer
// binaries (tests/fuzz/<target>_fuzzer.cc, built by tools/fuzz.sh) call these functions, and
// tests/unit/fuzz_regression_test.cc replays tests/fuzz/corpus/<target>/* through them in the
// normal test suite.
//
// The functions are not thread-safe (they reuse process-wide scratch state: a memfd, protobuf's
// log handler); call them from one thread.
#ifndef FEDTAIL_TESTS_FUZZ_FUZZ_TARGETS_H_
#define FEDTAIL_TESTS_FUZZ_FUZZ_TARGETS_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/wire/bundle_checks.h"
#include "common/wire/bundle_codec.h"
#include "common/wire/tensor_bundle.h"

namespace fedtail::fuzz {

// Limits every bundle target decodes with: small enough that no input can exhaust memory (the
// fuzzers run with -rss_limit_mb), large enough for every seed.
DecodeLimits fuzz_decode_limits();

// ---- bundle_stream: a stream of serialized v1::BundleChunk messages ----
//
// Input: one flags byte, then records, each a little-endian uint32 length followed by that many
// bytes (a length past the end takes the rest); the same framing as bundle files. Every record that
// parses as a BundleChunk is fed to a BundleDecoder, in order, until add() fails; then finish().
// Because the header seals itself and the payload with digests, random mutations would almost never
// get past them; the flags let the fuzzer repair them:
//   bit 0 (kFixHeaderDigest):  recompute the first header's header_digest before decoding;
//   bit 1 (kFixPayloadDigest): set the first header's payload_digest to the digest of the data
//                              chunks that follow it, then reseal the header;
//   bits 2-4: the chunk size used to re-encode a decoded bundle (kReencodeChunkBytes[i]).
// Invariants: errors are sticky; a decoded bundle has the declared payload size and an object as
// metadata, passes check_compatible with itself, and re-encodes (BundleEncoder) into a stream that
// decodes to a bitwise-equal bundle.
constexpr uint8_t kFixHeaderDigest = 1;
constexpr uint8_t kFixPayloadDigest = 2;
int fuzz_bundle_stream(const uint8_t* data, size_t size);

// The bundle_stream input that encodes `bundle` in chunks of `chunk_bytes` (for seeds), with
// `flags` as its first byte.
std::string bundle_stream_input(const TensorBundle& bundle, size_t chunk_bytes, uint8_t flags);

// ---- bundle_file: the bytes of a bundle file (common/wire/bundle_file.h) ----
//
// Input: the whole file. It is written to a memfd and read back with read_bundle_file(), the code
// path of checkpoints and initial models. Invariant: a bundle read successfully round-trips through
// encode_all/decode_all unchanged.
int fuzz_bundle_file(const uint8_t* data, size_t size);

// ---- run_config: the text of a run config file ----
//
// Input: the file's bytes. They are loaded with load_json_file() (through a memfd path), as the
// coordinator and fedtail-train load --config. A value that loads is then read the way
// parse_run_config() reads it, as far as that is torch-free: parse_data_options() on its "data"
// section, and every JsonReader accessor on every key of it and of its nested objects.
// (run_config.h, model_options.cc and train_options.h include LibTorch headers, so
// parse_run_config() itself runs only in fuzz_regression_test, which replays this corpus through
// load_run_config().) Invariants: no exception escapes; a typed read either fails with a Status or
// stores exactly the JSON value (no silent wrap-around or truncation), and succeeds for every
// integer the type can hold; error messages are valid UTF-8; parsed DataOptions survive
// data_options_to_json() and a second parse unchanged.
int fuzz_run_config(const uint8_t* data, size_t size);

}  // namespace fedtail::fuzz

#endif  // FEDTAIL_TESTS_FUZZ_FUZZ_TARGETS_H_
