#include "client/client_options.h"

#include <cctype>
#include <charconv>
#include <limits>

#include "common/base/json_reader.h"
#include "common/base/peer_text.h"

namespace fedtail::client {

namespace {

// Parses a non-negative decimal int (no sign, no spaces); false on anything else or overflow.
bool parse_index(const std::string& text, int* out) {
  if (text.empty()) return false;
  for (char c : text) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  }
  int value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return false;
  *out = value;
  return true;
}

}  // namespace

Status validate_client_id(const std::string& id, const std::string& what) {
  Status status = fedtail::validate_client_id(id, what);
  // The coordinator's check never echoes a bad id (it may hold terminal escapes); here the id
  // comes from this user's own flags or files, so show it.
  if (!status.ok() && status.message().find("may hold only") != std::string::npos) {
    return Status::InvalidArgument(
        what + ": may hold only letters, digits, '.', '_' and '-' (got \"" + id + "\")");
  }
  return status;
}

Result<ClientOptions> parse_client_options(const nlohmann::json& json, const std::string& path,
                                           bool require_identity) {
  ClientOptions options;
  JsonReader r(json, path);
  if (require_identity) {
    r.read_required("client_id", &options.client_id);
    r.read_required("partition", &options.partition);
  } else {
    r.read("client_id", &options.client_id);
    r.read("partition", &options.partition);
  }
  r.read("data_root", &options.data_root);
  r.read("model_path", &options.model_path);
  r.read("threads", &options.threads);
  r.read("state_dir", &options.state_dir);
  FEDTAIL_RETURN_IF_ERROR(r.status());
  if (r.has("client_id")) {
    r.absorb(validate_client_id(options.client_id, path + ".client_id"));
  }
  if (r.has("partition")) {
    r.check(options.partition >= 0, "partition",
            "must be >= 0 (got " + std::to_string(options.partition) + ")");
  }
  r.check(options.threads >= 0, "threads",
          "must be >= 0 (got " + std::to_string(options.threads) + "; 0 = the run config's)");
  FEDTAIL_RETURN_IF_ERROR(r.finish());
  return options;
}

Result<ClientOptions> load_client_options(const std::string& path, bool require_identity) {
  FEDTAIL_ASSIGN_OR_RETURN(nlohmann::json json, load_json_file(path));
  return parse_client_options(json, path, require_identity);
}

Result<ClientRange> parse_client_range(const std::string& text, const std::string& flag) {
  auto bad = [&]() {
    return Status::InvalidArgument(flag + ": expected A-B with 0 <= A <= B, or A (got \"" + text +
                                   "\")");
  };
  ClientRange range;
  size_t dash = text.find('-');
  if (dash == std::string::npos) {
    if (!parse_index(text, &range.first)) return bad();
    range.last = range.first;
    return range;
  }
  if (!parse_index(text.substr(0, dash), &range.first) ||
      !parse_index(text.substr(dash + 1), &range.last) || range.first > range.last) {
    return bad();
  }
  return range;
}

std::string virtual_client_id(int partition) { return "client-" + std::to_string(partition); }

}  // namespace fedtail::client
