#include "common/learning/model_options.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/base/json_reader.h"
#include "common/data/dataset.h"

namespace fedtail {

const std::vector<std::string>& model_architectures() {
  static const std::vector<std::string> kArchitectures = {"cnn", "resnet8", "resnet18", "resnet34"};
  return kArchitectures;
}

int native_feature_dim(const std::string& arch) {
  if (arch == "cnn") return 128;
  if (arch == "resnet8") return 64;
  if (arch == "resnet18" || arch == "resnet34") return 512;
  return 0;
}

namespace {

std::string architecture_list() {
  std::string list;
  for (const auto& a : model_architectures()) list += (list.empty() ? "" : ", ") + a;
  return list;
}

}  // namespace

Result<ModelOptions> parse_model_options(const nlohmann::json& json, const std::string& path) {
  ModelOptions options;
  JsonReader r(json, path);
  r.read_enum("arch", &options.arch, model_architectures());
  r.read("feature_dim", &options.feature_dim);
  r.check(options.feature_dim >= 0, "feature_dim",
          "must be >= 0 (got " + std::to_string(options.feature_dim) + "); 0 = native width");
  r.read("in_channels", &options.in_channels);
  r.check(options.in_channels >= 0, "in_channels",
          "must be >= 0 (got " + std::to_string(options.in_channels) + "); 0 = from the data");
  r.read("image_size", &options.image_size);
  r.check(options.image_size >= 0, "image_size",
          "must be >= 0 (got " + std::to_string(options.image_size) + "); 0 = from the data");
  r.read("num_classes", &options.num_classes);
  r.check(options.num_classes >= 0, "num_classes",
          "must be >= 0 (got " + std::to_string(options.num_classes) + "); 0 = from the data");
  r.read("groups", &options.groups);
  for (size_t i = 0; i < options.groups.size(); ++i) {
    r.check(native_feature_dim(options.groups[i]) != 0, "groups[" + std::to_string(i) + "]",
            "must be one of " + architecture_list() + " (got \"" + options.groups[i] + "\")");
  }
  FEDTAIL_RETURN_IF_ERROR(r.finish());
  return options;
}

namespace {

// Sets *field to `value` when it is 0; fails when it is set to something else.
Status fill_field(const char* name, int64_t value, int* field) {
  if (*field == 0) {
    *field = static_cast<int>(value);
    return Status::OK();
  }
  if (*field != value) {
    return Status::InvalidArgument("model." + std::string(name) + ": the config says " +
                                   std::to_string(*field) + " but the data has " +
                                   std::to_string(value));
  }
  return Status::OK();
}

}  // namespace

Status fill_model_options_from_data(const Dataset& data, ModelOptions* options) {
  if (!data.images.defined() || data.images.dim() != 4) {
    return Status::InvalidArgument("model: the dataset has no N×C×H×W images to size the model");
  }
  if (data.height() != data.width()) {
    return Status::InvalidArgument("model.image_size: images must be square (got " +
                                   std::to_string(data.height()) + "×" +
                                   std::to_string(data.width()) + ")");
  }
  FEDTAIL_RETURN_IF_ERROR(fill_field("in_channels", data.channels(), &options->in_channels));
  FEDTAIL_RETURN_IF_ERROR(fill_field("image_size", data.height(), &options->image_size));
  FEDTAIL_RETURN_IF_ERROR(fill_field("num_classes", data.num_classes, &options->num_classes));
  return Status::OK();
}

Status validate_model_options(const ModelOptions& options) {
  if (native_feature_dim(options.arch) == 0) {
    return Status::InvalidArgument("model.arch: must be one of " + architecture_list() +
                                   " (got \"" + options.arch + "\")");
  }
  for (size_t i = 0; i < options.groups.size(); ++i) {
    if (native_feature_dim(options.groups[i]) == 0) {
      return Status::InvalidArgument("model.groups[" + std::to_string(i) + "]: must be one of " +
                                     architecture_list() + " (got \"" + options.groups[i] + "\")");
    }
  }
  if (options.feature_dim < 0) {
    return Status::InvalidArgument("model.feature_dim: must be >= 0 (got " +
                                   std::to_string(options.feature_dim) + ")");
  }
  const struct {
    const char* name;
    int value;
  } sizes[] = {{"in_channels", options.in_channels},
               {"image_size", options.image_size},
               {"num_classes", options.num_classes}};
  for (const auto& s : sizes) {
    if (s.value < 1) {
      return Status::InvalidArgument("model." + std::string(s.name) + ": must be >= 1 (got " +
                                     std::to_string(s.value) + "); fill it from the dataset");
    }
  }
  return Status::OK();
}

ModelOptions client_model_options(const ModelOptions& options, int partition) {
  ModelOptions out = options;
  if (!options.groups.empty()) {
    const size_t n = options.groups.size();
    out.arch = options.groups[static_cast<size_t>(partition < 0 ? 0 : partition) % n];
  }
  out.groups.clear();
  return out;
}

std::vector<std::string> client_architectures(const ModelOptions& options) {
  if (options.groups.empty()) return {options.arch};
  std::vector<std::string> out;
  for (const std::string& a : options.groups) {
    if (std::find(out.begin(), out.end(), a) == out.end()) out.push_back(a);
  }
  return out;
}

Result<int> common_feature_dim(const ModelOptions& options) {
  const char* field = options.groups.empty() ? "model.arch" : "model.groups";
  const std::vector<std::string> archs = client_architectures(options);
  for (const std::string& a : archs) {
    if (native_feature_dim(a) == 0) {
      return Status::InvalidArgument(std::string(field) + ": must be one of " +
                                     architecture_list() + " (got \"" + a + "\")");
    }
  }
  if (options.feature_dim > 0) return options.feature_dim;
  std::string widths;
  for (const std::string& a : archs) {
    widths += (widths.empty() ? "" : ", ") + a + " " + std::to_string(native_feature_dim(a));
  }
  for (const std::string& a : archs) {
    if (native_feature_dim(a) != native_feature_dim(archs.front())) {
      return Status::InvalidArgument(
          "model.feature_dim: the clients' architectures have different native feature widths (" +
          widths + "): set feature_dim > 0 so that every client's features have the same size");
    }
  }
  return native_feature_dim(archs.front());
}

}  // namespace fedtail
