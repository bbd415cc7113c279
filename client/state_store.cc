#include "client/state_store.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <utility>

#include "common/wire/bundle_file.h"

namespace fedtail::client {

namespace {

constexpr char kFormat[] = "fedtail-client-state";
constexpr int kVersion = 1;
constexpr std::string_view kCurrentPrefix = "current/";
constexpr std::string_view kPreviousPrefix = "previous/";

// A copy of `tensor` named `name` (names are fixed at construction, so the bytes are copied).
Result<NamedTensor> renamed_copy(const NamedTensor& tensor, std::string name) {
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor copy, NamedTensor::uninitialized(
                                                 std::move(name), tensor.dtype(), tensor.shape()));
  if (tensor.nbytes() > 0) std::memcpy(copy.mutable_bytes(), tensor.bytes(), tensor.nbytes());
  return copy;
}

Status add_prefixed(const TensorBundle& from, std::string_view prefix, TensorBundle* to) {
  for (const NamedTensor& t : from) {
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor copy, renamed_copy(t, std::string(prefix) + t.name()));
    FEDTAIL_RETURN_IF_ERROR(to->add(std::move(copy)));
  }
  return Status::OK();
}

strategies::ClientState clone_state(const strategies::ClientState& state) {
  strategies::ClientState copy;
  copy.tensors = state.tensors.clone();
  copy.values = state.values;
  return copy;
}

}  // namespace

bool state_is_empty(const strategies::ClientState& state) {
  return state.tensors.empty() && (state.values.is_null() || state.values.empty());
}

Status write_state_file(const std::string& path, const StateRecord& record) {
  TensorBundle bundle;
  FEDTAIL_RETURN_IF_ERROR(add_prefixed(record.current.tensors, kCurrentPrefix, &bundle));
  FEDTAIL_RETURN_IF_ERROR(add_prefixed(record.previous.tensors, kPreviousPrefix, &bundle));
  nlohmann::json meta = {{"format", kFormat},
                         {"version", kVersion},
                         {"run_id", record.run_id},
                         {"client_id", record.client_id},
                         {"round", record.round},
                         {"kind", record.kind},
                         {"values", record.current.values},
                         {"previous_values", record.previous.values}};
  FEDTAIL_RETURN_IF_ERROR(bundle.set_metadata(std::move(meta)));
  return write_bundle_file(path, bundle);
}

Result<StateRecord> read_state_file(const std::string& path) {
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle bundle, read_bundle_file(path));
  const nlohmann::json& meta = bundle.metadata();
  auto corrupt = [&](const std::string& why) {
    return Status::Corruption(path + ": not a client state file (" + why + ")");
  };
  if (meta.value("format", "") != kFormat) return corrupt("format tag missing");
  if (!meta.contains("version") || !meta["version"].is_number_integer()) {
    return corrupt("version missing");
  }
  if (meta["version"].get<int>() != kVersion) {
    return corrupt("version " + meta["version"].dump() + ", expected " + std::to_string(kVersion));
  }
  StateRecord record;
  try {
    record.run_id = meta.at("run_id").get<std::string>();
    record.client_id = meta.at("client_id").get<std::string>();
    record.round = meta.at("round").get<int64_t>();
    record.kind = meta.at("kind").get<int>();
    record.current.values = meta.at("values");
    record.previous.values = meta.at("previous_values");
  } catch (const nlohmann::json::exception& e) {
    return corrupt(std::string("bad metadata: ") + e.what());
  }
  for (NamedTensor& t : bundle) {
    std::string_view name = t.name();
    TensorBundle* target = nullptr;
    std::string_view prefix;
    if (name.substr(0, kCurrentPrefix.size()) == kCurrentPrefix) {
      target = &record.current.tensors;
      prefix = kCurrentPrefix;
    } else if (name.substr(0, kPreviousPrefix.size()) == kPreviousPrefix) {
      target = &record.previous.tensors;
      prefix = kPreviousPrefix;
    } else {
      return corrupt("tensor \"" + t.name() + "\" is neither current/ nor previous/");
    }
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor copy,
                             renamed_copy(t, std::string(name.substr(prefix.size()))));
    FEDTAIL_RETURN_IF_ERROR(target->add(std::move(copy)));
  }
  return record;
}

StateStore::StateStore(std::string dir) : dir_(std::move(dir)) {}

std::string StateStore::path_for(const std::string& client_id) const {
  if (dir_.empty()) return "";
  return (std::filesystem::path(dir_) / (client_id + ".state")).string();
}

Result<StateRecord> StateStore::read_record(const std::string& client_id) {
  if (dir_.empty()) {
    auto it = memory_.find(client_id);
    if (it == memory_.end()) return Status::NotFound(client_id + ": no state yet");
    StateRecord copy;
    copy.run_id = it->second.run_id;
    copy.client_id = it->second.client_id;
    copy.round = it->second.round;
    copy.kind = it->second.kind;
    copy.current = clone_state(it->second.current);
    copy.previous = clone_state(it->second.previous);
    return copy;
  }
  return read_state_file(path_for(client_id));
}

Result<strategies::ClientState> StateStore::load(const std::string& client_id,
                                                 const std::string& run_id, int64_t round,
                                                 int kind) {
  std::lock_guard<std::mutex> lock(mu_);
  if (known_empty_.count(client_id)) return strategies::ClientState{};
  Result<StateRecord> record = read_record(client_id);
  if (!record.ok()) {
    if (record.status().code() == StatusCode::kNotFound) {
      known_empty_.insert(client_id);
      return strategies::ClientState{};
    }
    return record.status();
  }
  if (record->client_id != client_id) {
    return Status::Corruption(path_for(client_id) + ": holds the state of client \"" +
                              record->client_id + "\", not \"" + client_id + "\"");
  }
  if (record->run_id != run_id) return strategies::ClientState{};
  if (state_is_empty(record->current) && state_is_empty(record->previous)) {
    known_empty_.insert(client_id);
    return strategies::ClientState{};
  }
  if (record->round == round && record->kind == kind) return std::move(record->previous);
  return std::move(record->current);
}

Status StateStore::save(const std::string& client_id, const std::string& run_id, int64_t round,
                        int kind, const strategies::ClientState& before,
                        const strategies::ClientState& after) {
  std::lock_guard<std::mutex> lock(mu_);
  const bool empty = state_is_empty(before) && state_is_empty(after);
  if (empty && known_empty_.count(client_id)) return Status::OK();
  StateRecord record;
  record.run_id = run_id;
  record.client_id = client_id;
  record.round = round;
  record.kind = kind;
  record.current = clone_state(after);
  record.previous = clone_state(before);
  if (dir_.empty()) {
    memory_[client_id] = std::move(record);
  } else {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec) {
      return Status::IOError(dir_ + ": cannot create the state directory (" + ec.message() + ")");
    }
    ::chmod(dir_.c_str(), 0700);  // best effort: the state may hold private model parts
    FEDTAIL_RETURN_IF_ERROR(write_state_file(path_for(client_id), record));
  }
  if (empty) {
    known_empty_.insert(client_id);
  } else {
    known_empty_.erase(client_id);
  }
  return Status::OK();
}

Result<std::string> StateStore::quarantine(const std::string& client_id) {
  std::lock_guard<std::mutex> lock(mu_);
  memory_.erase(client_id);
  if (dir_.empty()) return std::string();
  const std::string path = path_for(client_id);
  const std::string aside = path + ".corrupt";
  if (std::rename(path.c_str(), aside.c_str()) != 0) {
    return Status::IOError(path + ": cannot move the unreadable state file aside (" +
                           std::strerror(errno) + ")");
  }
  return aside;
}

}  // namespace fedtail::client
