// ClientOptions: the small per-client configuration file of fedtail-client (client.json), and the
// `--clients A-B` range of a process that hosts several virtual clients.
//
//   {"client_id": "client-3",  // required unless --clients is given
//    "partition": 3,           // required unless --clients is given: the client's data share
//    "data_root": "",          // optional: where the data is here (--data-root wins)
//    "model_path": "",         // optional: this machine's TorchScript model file (--model-path)
//    "threads": 0,             // optional: LibTorch threads (0 = the run config's choice)
//    "state_dir": ""}          // optional: where per-client state files live
//
// Everything else (data, model, training) comes from the run config the coordinator sends at Join.
// Plain value types; the functions are thread-safe.
#ifndef FEDTAIL_CLIENT_CLIENT_OPTIONS_H_
#define FEDTAIL_CLIENT_CLIENT_OPTIONS_H_

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"

namespace fedtail::client {

struct ClientOptions {
  // The client's identity: letters, digits, '.', '_' and '-', 1..64 characters, not starting with
  // '.' (it names the client's state file). Under mutual TLS it must equal the certificate's CN.
  std::string client_id;
  // Index of the client's partition of the run's data, in [0, config.data.clients). -1 = not set.
  int partition = -1;
  // Where the dataset files are on this machine; --data-root overrides it. "" = the dataset's
  // default location. The run config's config.data.root (the coordinator's) is never used.
  std::string data_root;
  // This machine's copy of a TorchScript model (config.model.arch "torchscript"); --model-path
  // overrides it. "" = the run config's model.path.
  std::string model_path;
  // LibTorch intra-op threads. 0 (default) = use the run config's "threads".
  int threads = 0;
  // Directory of the per-client state files (<state_dir>/<client_id>.state). "" = the default.
  std::string state_dir;
};

// Reads ClientOptions from the JSON object `json`; errors name `path` (e.g. "client.json"), as in
// "client.json.partition: must be >= 0 (got -2)". With `require_identity`, client_id and partition
// are required. kInvalidArgument for a wrong type, a bad value or an unknown key.
Result<ClientOptions> parse_client_options(const nlohmann::json& json, const std::string& path,
                                           bool require_identity);

// Reads and parses the file at `path`; errors name the file. kNotFound when it cannot be opened.
Result<ClientOptions> load_client_options(const std::string& path, bool require_identity);

// OK when `id` is a valid client id (see ClientOptions::client_id); otherwise kInvalidArgument
// whose message starts with `what` (e.g. "--id").
Status validate_client_id(const std::string& id, const std::string& what);

// An inclusive range of partitions hosted by one process: "3-7" (first 3, last 7) or "4" (one).
struct ClientRange {
  int first = 0;
  int last = 0;
  int size() const { return last - first + 1; }
};

// Parses "A-B" (0 <= A <= B, decimal) or "A". kInvalidArgument naming `flag` and the text
// otherwise, e.g. `--clients: expected A-B with 0 <= A <= B (got "7-3")`.
Result<ClientRange> parse_client_range(const std::string& text,
                                       const std::string& flag = "--clients");

// The id of the virtual client of partition k: "client-<k>".
std::string virtual_client_id(int partition);

}  // namespace fedtail::client

#endif  // FEDTAIL_CLIENT_CLIENT_OPTIONS_H_
