// The strategy registry: name -> (ServerStrategy factory, ClientAlgorithm factory), and the loader
// for strategy plugins (shared libraries given with --plugin).
//
// Built-in strategies are registered by register_builtin_strategies() (explicit, because a static
// library's self-registering objects would be dropped by the linker). A plugin is a shared library
// exporting
//   extern "C" int fedtail_plugin_init(int abi_version, fedtail::strategies::PluginHost* host,
//                                      fedtail::Status* status)
// (write it with FEDTAIL_STRATEGY_PLUGIN below): it returns 1 when `abi_version` is not the one it
// was built for, else registers its strategies through `host`, stores the outcome in *status and
// returns 0. The binaries export their symbols (CMake ENABLE_EXPORTS), so a plugin
// uses fedtail's own TensorBundle, Status, model and training code.
//
// Thread-safety: registration and lookup are guarded by an internal mutex.
#ifndef FEDTAIL_STRATEGIES_REGISTRY_H_
#define FEDTAIL_STRATEGIES_REGISTRY_H_

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// Factories get the run's config.strategy object (may be empty) and validate it: a bad option is
// kInvalidArgument naming its JSON path ("config.strategy.mu: must be >= 0").
using ServerFactory = std::function<Result<std::unique_ptr<ServerStrategy>>(const nlohmann::json&)>;
using ClientFactory =
    std::function<Result<std::unique_ptr<ClientAlgorithm>>(const nlohmann::json&)>;

struct StrategyEntry {
  std::string name;         // e.g. "fedavg"
  std::string description;  // one line, for --help and listings
  ServerFactory server;
  ClientFactory client;
};

// Adds a strategy. kInvalidArgument when the name is empty or already registered.
Status register_strategy(StrategyEntry entry);

// Registers fedtail's own strategies; safe to call more than once.
void register_builtin_strategies();

// The registered names, sorted.
std::vector<std::string> strategy_names();

// A copy of the entry for `name`, or kNotFound listing the registered names.
Result<StrategyEntry> find_strategy(const std::string& name);

// Convenience: find_strategy + the factory.
Result<std::unique_ptr<ServerStrategy>> make_server_strategy(const std::string& name,
                                                             const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_client_algorithm(const std::string& name,
                                                               const nlohmann::json& config);

// The plugin ABI version; a plugin built against another version is refused.
// 2: ServerStrategy::resume, RunContext::auxiliary; 3: TaskSpec::expected_update;
// 4: ServerStrategy::supports_mean_aggregation, ClientUpdate::contributors.
constexpr int kPluginAbiVersion = 4;

// Handed to a plugin's init function; valid only during that call.
class PluginHost {
 public:
  virtual ~PluginHost() = default;
  virtual Status register_strategy(StrategyEntry entry) = 0;
};

// Loads the shared library at `path` and runs its fedtail_plugin_init. Before dlopen:
// kInvalidArgument when `path` has no '/' (a bare name would be searched on LD_LIBRARY_PATH: give
// ./libfoo.so) or is not a regular file; kNotFound when it does not exist; kFailedPrecondition
// naming the file and its mode when the library (symlinks resolved) or its directory is owned by
// neither this user nor root, or is writable by group/others (a sticky directory such as /tmp
// excepted). Then kNotFound / kInvalidArgument with dlerror()'s text when it cannot be loaded or
// has no entry point, kFailedPrecondition on an ABI mismatch, the plugin's own Status when its
// registration fails. The library stays loaded.
Status load_plugin(const std::string& path);

}  // namespace fedtail::strategies

// Defines a plugin's entry point. Usage, in the plugin's .cc (at global scope):
//   FEDTAIL_STRATEGY_PLUGIN(host) {
//     return host->register_strategy(
//         {"my_fedavgm", "FedAvg with server momentum", make_server, make_client});
//   }
// The body returns a fedtail::Status; exceptions are caught and reported as kInternal.
#define FEDTAIL_STRATEGY_PLUGIN(host_param)                                                  \
  static ::fedtail::Status fedtail_plugin_register_impl(::fedtail::strategies::PluginHost*); \
  extern "C" __attribute__((visibility("default"))) int fedtail_plugin_init(                 \
      int abi_version, ::fedtail::strategies::PluginHost* host, ::fedtail::Status* status) { \
    if (abi_version != ::fedtail::strategies::kPluginAbiVersion) return 1;                   \
    try {                                                                                    \
      *status = fedtail_plugin_register_impl(host);                                          \
    } catch (const std::exception& e) {                                                      \
      *status = ::fedtail::Status::Internal(std::string("plugin threw: ") + e.what());       \
    } catch (...) {                                                                          \
      *status = ::fedtail::Status::Internal("plugin threw a non-standard exception");        \
    }                                                                                        \
    return 0;                                                                                \
  }                                                                                          \
  static ::fedtail::Status fedtail_plugin_register_impl(                                     \
      ::fedtail::strategies::PluginHost* host_param)

#endif  // FEDTAIL_STRATEGIES_REGISTRY_H_
