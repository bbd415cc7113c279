#include "common/learning/model_options.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/base/json_reader.h"
#include "common/data/dataset.h"
#include "common/learning/torchscript_model.h"

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

// The built-in architectures (what model.groups takes), and with `torchscript` what model.arch
// takes.
std::string architecture_list(bool torchscript) {
  std::string list;
  for (const auto& a : model_architectures()) list += (list.empty() ? "" : ", ") + a;
  return torchscript ? list + ", " + kTorchScriptArch : list;
}

bool is_torchscript(const ModelOptions& options) { return options.arch == kTorchScriptArch; }

// "layout": [[name, dtype, [shape...]], ...].
Status parse_layout(const nlohmann::json& json, const std::string& path,
                    std::vector<TensorLayout>* out) {
  if (!json.is_array()) return Status::InvalidArgument(path + ": must be an array");
  for (size_t i = 0; i < json.size(); ++i) {
    const nlohmann::json& e = json[i];
    const std::string at = path + "[" + std::to_string(i) + "]";
    if (!e.is_array() || e.size() != 3 || !e[0].is_string() || !e[1].is_string() ||
        !e[2].is_array()) {
      return Status::InvalidArgument(at + ": must be [name, dtype, [shape]]");
    }
    TensorLayout t;
    t.name = e[0].get<std::string>();
    t.dtype = e[1].get<std::string>();
    for (const nlohmann::json& d : e[2]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        return Status::InvalidArgument(at + ": shape entries must be integers >= 0");
      }
      t.shape.push_back(d.get<int64_t>());
    }
    out->push_back(std::move(t));
  }
  return Status::OK();
}

}  // namespace

Result<ModelOptions> parse_model_options(const nlohmann::json& json, const std::string& path) {
  ModelOptions options;
  JsonReader r(json, path);
  std::vector<std::string> archs = model_architectures();
  archs.push_back(kTorchScriptArch);
  r.read_enum("arch", &options.arch, archs);
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
            "must be one of " + architecture_list(false) + " (got \"" + options.groups[i] + "\")" +
                (options.groups[i] == kTorchScriptArch
                     ? "; a TorchScript model cannot be part of heterogeneous groups"
                     : ""));
  }
  r.read("path", &options.path);
  r.read("sha256", &options.sha256);
  nlohmann::json layout;
  r.read_raw("layout", &layout);
  FEDTAIL_RETURN_IF_ERROR(r.status());
  if (!layout.is_null()) r.absorb(parse_layout(layout, path + ".layout", &options.layout));
  if (is_torchscript(options)) {
    r.check(!options.path.empty(), "path",
            "required with arch \"torchscript\": the file torch.jit.save wrote (see "
            "tools/export_model.py)");
    r.check(options.sha256.empty() || options.sha256.size() == 64, "sha256",
            "must be 64 hex digits (got \"" + options.sha256 + "\")");
  } else {
    const char* key = !options.path.empty()     ? "path"
                      : !options.sha256.empty() ? "sha256"
                      : !options.layout.empty() ? "layout"
                                                : nullptr;
    if (key != nullptr) {
      r.check(false, key, "only for arch \"torchscript\" (arch is \"" + options.arch + "\")");
    }
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
  if (is_torchscript(options)) {
    if (options.path.empty()) {
      return Status::InvalidArgument("model.path: required with arch \"torchscript\"");
    }
  } else if (native_feature_dim(options.arch) == 0) {
    return Status::InvalidArgument("model.arch: must be one of " + architecture_list(true) +
                                   " (got \"" + options.arch + "\")");
  }
  for (size_t i = 0; i < options.groups.size(); ++i) {
    if (native_feature_dim(options.groups[i]) == 0) {
      return Status::InvalidArgument("model.groups[" + std::to_string(i) + "]: must be one of " +
                                     architecture_list(false) + " (got \"" + options.groups[i] +
                                     "\")");
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
  if (is_torchscript(options) && options.groups.empty()) {
    if (options.feature_dim > 0) return options.feature_dim;
    return torchscript_feature_dim(options);
  }
  const std::vector<std::string> archs = client_architectures(options);
  for (const std::string& a : archs) {
    if (native_feature_dim(a) == 0) {
      return Status::InvalidArgument(std::string(field) + ": must be one of " +
                                     architecture_list(false) + " (got \"" + a + "\")");
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
