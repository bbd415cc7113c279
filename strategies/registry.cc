#include "strategies/registry.h"

#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "strategies/ccvr/ccvr.h"
#include "strategies/creff/creff.h"
#include "strategies/ditto/ditto.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/fedbabu/fedbabu.h"
#include "strategies/fedbn/fedbn.h"
#include "strategies/fedbuff/fedbuff.h"
#include "strategies/feddyn/feddyn.h"
#include "strategies/fedetf/fedetf.h"
#include "strategies/fedloge/fedloge.h"
#include "strategies/fednova/fednova.h"
#include "strategies/fedopt/fedopt.h"
#include "strategies/fedper/fedper.h"
#include "strategies/fedproto/fedproto.h"
#include "strategies/fedprox/fedprox.h"
#include "strategies/fedrep/fedrep.h"
#include "strategies/fedrod/fedrod.h"
#include "strategies/fedsa/fedsa.h"
#include "strategies/moon/moon.h"
#include "strategies/qfedavg/qfedavg.h"
#include "strategies/ratioloss/ratioloss.h"
#include "strategies/scaffold/scaffold.h"

namespace fedtail::strategies {
namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, StrategyEntry> entries;  // guarded by mu; std::map: names come out sorted
  std::set<void*> plugins;                       // guarded by mu; handles whose init succeeded
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: plugins' factories outlive exit order
  return *r;
}

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? "(none)" : out;
}

class HostImpl final : public PluginHost {
 public:
  Status register_strategy(StrategyEntry entry) override {
    return ::fedtail::strategies::register_strategy(std::move(entry));
  }
};

// The entry point FEDTAIL_STRATEGY_PLUGIN defines.
using PluginInitFn = int (*)(int abi_version, PluginHost* host, Status* status);

std::string dl_error_text() {
  const char* e = dlerror();
  return e ? e : "unknown dynamic loader error";
}

}  // namespace

Status register_strategy(StrategyEntry entry) {
  if (entry.name.empty()) return Status::InvalidArgument("register_strategy: empty strategy name");
  if (!entry.server || !entry.client) {
    return Status::InvalidArgument("register_strategy: strategy \"" + entry.name +
                                   "\" lacks a server or a client factory");
  }
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  if (r.entries.count(entry.name) != 0) {
    return Status::InvalidArgument("register_strategy: strategy \"" + entry.name +
                                   "\" is already registered");
  }
  std::string name = entry.name;
  r.entries.emplace(std::move(name), std::move(entry));
  return Status::OK();
}

void register_builtin_strategies() {
  static std::once_flag once;
  std::call_once(once, [] {
    // A name already taken (only possible if something registered it before this call) keeps
    // its earlier entry: the error is deliberately ignored.
    std::vector<StrategyEntry> builtins;
    builtins.push_back(fedavg_strategy_entry());
    builtins.push_back(fedloge_strategy_entry());
    builtins.push_back(fedproto_strategy_entry());
    builtins.push_back(fedprox_strategy_entry());
    builtins.push_back(fedsa_strategy_entry());
    builtins.push_back(fedbn_strategy_entry());
    builtins.push_back(fedper_strategy_entry());
    builtins.push_back(fedrep_strategy_entry());
    builtins.push_back(fedbabu_strategy_entry());
    builtins.push_back(fedrod_strategy_entry());
    builtins.push_back(ditto_strategy_entry());
    builtins.push_back(fedetf_strategy_entry());
    builtins.push_back(ccvr_strategy_entry());
    builtins.push_back(creff_strategy_entry());
    builtins.push_back(ratioloss_strategy_entry());
    builtins.push_back(fedavgm_strategy_entry());
    builtins.push_back(fedadam_strategy_entry());
    builtins.push_back(fedyogi_strategy_entry());
    builtins.push_back(fedadagrad_strategy_entry());
    builtins.push_back(scaffold_strategy_entry());
    builtins.push_back(fednova_strategy_entry());
    builtins.push_back(feddyn_strategy_entry());
    builtins.push_back(moon_strategy_entry());
    builtins.push_back(qfedavg_strategy_entry());
    builtins.push_back(fedbuff_strategy_entry());
    for (StrategyEntry& entry : builtins) {
      Status ignored = register_strategy(std::move(entry));
      (void)ignored;
    }
  });
}

std::vector<std::string> strategy_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> names;
  names.reserve(r.entries.size());
  for (const auto& [name, entry] : r.entries) names.push_back(name);
  return names;
}

Result<StrategyEntry> find_strategy(const std::string& name) {
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.entries.find(name);
    if (it != r.entries.end()) return it->second;
  }
  return Status::NotFound("unknown strategy \"" + name +
                          "\"; registered: " + join_names(strategy_names()));
}

Result<std::unique_ptr<ServerStrategy>> make_server_strategy(const std::string& name,
                                                             const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(StrategyEntry entry, find_strategy(name));
  try {
    FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<ServerStrategy> server, entry.server(config));
    if (!server) return Status::Internal("strategy \"" + name + "\": server factory returned null");
    return server;
  } catch (const std::exception& e) {
    return Status::Internal("strategy \"" + name + "\": server factory threw: " + e.what());
  }
}

Result<std::unique_ptr<ClientAlgorithm>> make_client_algorithm(const std::string& name,
                                                               const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(StrategyEntry entry, find_strategy(name));
  try {
    FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<ClientAlgorithm> client, entry.client(config));
    if (!client) return Status::Internal("strategy \"" + name + "\": client factory returned null");
    return client;
  } catch (const std::exception& e) {
    return Status::Internal("strategy \"" + name + "\": client factory threw: " + e.what());
  }
}

namespace {

std::string octal_mode(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof(text), "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

// Refuses `file` (the plugin or its directory) when someone other than this user or root could
// have put code there: it is owned by another user, or group/others may write it. A directory
// with the sticky bit (e.g. /tmp) is accepted when writable by others: they cannot replace or
// remove entries they do not own, and the plugin itself must be ours or root's.
Status check_plugin_owner_and_mode(const std::string& where, const std::string& file, bool is_dir) {
  struct stat st;
  if (::stat(file.c_str(), &st) != 0) {
    return Status::IOError(where + ": stat " + file + ": " + std::strerror(errno));
  }
  const std::string mode = octal_mode(st.st_mode);
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return Status::FailedPrecondition(where + ": " + file + " (mode " + mode +
                                      ") is owned by uid " + std::to_string(st.st_uid) +
                                      ", neither this user nor root; refusing to load it");
  }
  const bool sticky = is_dir && (st.st_mode & S_ISVTX) != 0;
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && !sticky) {
    return Status::FailedPrecondition(where + ": " + file + " has mode " + mode +
                                      ": writable by group or others, who could replace the code "
                                      "it runs; refusing to load it (chmod go-w)");
  }
  return Status::OK();
}

// The checks load_plugin makes before dlopen: a path (not a bare name dlopen would search for),
// an existing regular file, and trusted owners and modes for the file and its directory.
Status check_plugin_path(const std::string& where, const std::string& path) {
  if (path.find('/') == std::string::npos) {
    return Status::InvalidArgument(where + ": give a path (e.g. ./" + path +
                                   "), not a bare name: dlopen would search LD_LIBRARY_PATH and "
                                   "the system library directories for it");
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return Status::NotFound(where + ": no such file");
    return Status::IOError(where + ": stat: " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(where + ": not a regular file");
  // Check what dlopen will map: the file a symlink points to, and the directory holding it.
  char resolved[PATH_MAX];
  if (::realpath(path.c_str(), resolved) == nullptr) {
    return Status::IOError(where + ": realpath: " + std::strerror(errno));
  }
  const std::string file = resolved;
  const size_t slash = file.find_last_of('/');
  const std::string dir = slash == 0 ? "/" : file.substr(0, slash);
  FEDTAIL_RETURN_IF_ERROR(check_plugin_owner_and_mode(where, file, /*is_dir=*/false));
  return check_plugin_owner_and_mode(where, dir, /*is_dir=*/true);
}

}  // namespace

Status load_plugin(const std::string& path) {
  const std::string where = "plugin " + path;
  FEDTAIL_RETURN_IF_ERROR(check_plugin_path(where, path));
  // One plugin load at a time: init functions register under the registry mutex in turn, and two
  // threads loading the same library must not both run its init.
  static std::mutex load_mu;
  std::lock_guard<std::mutex> load_lock(load_mu);

  dlerror();  // clear any stale error
  // RTLD_NOW: an unresolved symbol fails here, with the symbol named, not at first call.
  // RTLD_LOCAL: the plugin's own symbols stay out of the global namespace (two plugins may
  // define the same internal names); it resolves fedtail's symbols from the host binary.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const std::string error = dl_error_text();
    if (access(path.c_str(), F_OK) != 0) {
      return Status::NotFound(where + ": no such file (" + error + ")");
    }
    return Status::InvalidArgument(where + ": cannot be loaded: " + error);
  }
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    if (r.plugins.count(handle) != 0) {
      dlclose(handle);  // drops the reference this dlopen added; the library stays loaded
      return Status::OK();
    }
  }
  dlerror();
  void* symbol = dlsym(handle, "fedtail_plugin_init");
  if (symbol == nullptr) {
    const std::string error = dl_error_text();
    dlclose(handle);
    return Status::InvalidArgument(where +
                                   ": no entry point fedtail_plugin_init (define it with "
                                   "FEDTAIL_STRATEGY_PLUGIN): " +
                                   error);
  }
  auto init = reinterpret_cast<PluginInitFn>(symbol);
  HostImpl host;
  Status status;
  int rc = 0;
  try {
    rc = init(kPluginAbiVersion, &host, &status);
  } catch (...) {
    // The macro catches everything; a hand-written entry point might not.
    status = Status::Internal("the entry point threw an exception");
  }
  if (rc != 0) {
    dlclose(handle);
    return Status::FailedPrecondition(where + ": built for another plugin ABI (this fedtail has " +
                                      std::to_string(kPluginAbiVersion) +
                                      "); rebuild it against this fedtail");
  }
  // From here the library stays loaded even on error: it may have registered some factories.
  if (!status.ok()) return status.with_context(where + ": registration failed");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.plugins.insert(handle);
  return Status::OK();
}

}  // namespace fedtail::strategies
