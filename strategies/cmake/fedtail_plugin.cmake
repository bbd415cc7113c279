# fedtail_add_strategy_plugin(<name> <source>...)
#
# Builds a strategy plugin: the shared library libfedtail_<name>.so, which fedtail-coordinator,
# fedtail-client and fedtail-sim load with --plugin. Its sources define the entry point with
# FEDTAIL_STRATEGY_PLUGIN (strategies/registry.h), which registers the strategy when the library is
# loaded. A plugin links nothing of fedtail: the binary that loads it
# provides fedtail's symbols. It compiles against fedtail's headers (fedtail::plugin_api: fedtail,
# LibTorch, nlohmann/json, spdlog). The same function serves the in-tree examples and, after
# find_package(fedtail), a strategy in its own repository.
function(fedtail_add_strategy_plugin name)
  if(NOT ARGN)
    message(FATAL_ERROR "fedtail_add_strategy_plugin(${name}): no source files given")
  endif()
  if(NOT name MATCHES "^[a-z0-9_]+$")
    message(FATAL_ERROR "fedtail_add_strategy_plugin(${name}): the name must be lower-case letters, digits and _")
  endif()
  add_library(fedtail_${name} MODULE ${ARGN})
  target_link_libraries(fedtail_${name} PRIVATE fedtail::plugin_api)
  target_compile_features(fedtail_${name} PRIVATE cxx_std_17)
  set_target_properties(fedtail_${name} PROPERTIES CXX_EXTENSIONS OFF)
endfunction()
