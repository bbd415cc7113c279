#include "common/learning/train_options.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "common/base/json_reader.h"

namespace fedtail {

namespace {

std::string got(double v) {
  std::ostringstream s;
  s << "(got " << v << ")";
  return s.str();
}

}  // namespace

const char* loss_kind_name(LocalLossOptions::Kind kind) {
  switch (kind) {
    case LocalLossOptions::Kind::kCrossEntropy:
      return "ce";
    case LocalLossOptions::Kind::kBalancedSoftmax:
      return "balanced_softmax";
    case LocalLossOptions::Kind::kFocal:
      return "focal";
    case LocalLossOptions::Kind::kClassWeighted:
      return "class_weighted";
  }
  return "ce";
}

Result<LocalLossOptions> parse_local_loss_options(const nlohmann::json& json,
                                                  const std::string& path) {
  using Kind = LocalLossOptions::Kind;
  LocalLossOptions o;
  if (json.is_null()) return o;
  const std::vector<std::string> kinds = {"ce", "balanced_softmax", "focal", "class_weighted"};
  auto kind_of = [&](const std::string& name) {
    for (size_t i = 0; i < kinds.size(); ++i) {
      if (kinds[i] == name) return static_cast<Kind>(i);
    }
    return Kind::kCrossEntropy;
  };
  if (json.is_string()) {
    const std::string name = json.get<std::string>();
    if (std::find(kinds.begin(), kinds.end(), name) == kinds.end()) {
      return Status::InvalidArgument(path + ": unknown loss \"" + name +
                                     "\" (expected ce, balanced_softmax, focal or class_weighted)");
    }
    o.kind = kind_of(name);
    return o;
  }
  JsonReader r(json, path);
  std::string name;
  r.read_required("name", &name);
  if (r.status().ok()) {
    r.read_enum("name", &name, kinds);
  }
  FEDTAIL_RETURN_IF_ERROR(r.status());
  o.kind = kind_of(name);
  // Each option belongs to some kinds; given to another it is a mistake worth naming.
  auto only_for = [&](const char* key, std::initializer_list<Kind> owners,
                      const char* owner_names) {
    if (!r.has(key)) return false;
    for (Kind k : owners) {
      if (k == o.kind) return true;
    }
    r.check(false, key, std::string("applies only to ") + owner_names + " (loss is " + name + ")");
    return false;
  };
  if (only_for("counts", {Kind::kBalancedSoftmax, Kind::kClassWeighted},
               "balanced_softmax and class_weighted")) {
    std::string counts = "client";
    r.read_enum("counts", &counts, {"client", "global"});
    o.global_counts = counts == "global";
  }
  if (only_for("tau", {Kind::kBalancedSoftmax}, "balanced_softmax")) {
    r.read("tau", &o.tau);
    r.check(o.tau >= 0 && std::isfinite(o.tau), "tau", "must be >= 0 " + got(o.tau));
  }
  if (only_for("gamma", {Kind::kFocal}, "focal")) {
    r.read("gamma", &o.gamma);
    r.check(o.gamma >= 0 && std::isfinite(o.gamma), "gamma", "must be >= 0 " + got(o.gamma));
  }
  FEDTAIL_RETURN_IF_ERROR(r.finish());
  return o;
}

Result<LocalTrainOptions> parse_local_train_options(const nlohmann::json& json,
                                                    const std::string& path) {
  LocalTrainOptions o;
  JsonReader r(json, path);
  r.read("epochs", &o.epochs);
  r.check(o.epochs >= 1, "epochs", "must be >= 1 " + got(o.epochs));
  r.read("batch_size", &o.batch_size);
  r.check(o.batch_size >= 1, "batch_size", "must be >= 1 " + got(o.batch_size));
  r.read("lr", &o.lr);
  r.check(o.lr > 0 && std::isfinite(o.lr), "lr", "must be > 0 " + got(o.lr));
  r.read("momentum", &o.momentum);
  r.check(o.momentum >= 0 && o.momentum < 1, "momentum", "must be in [0, 1) " + got(o.momentum));
  r.read("weight_decay", &o.weight_decay);
  r.check(o.weight_decay >= 0 && std::isfinite(o.weight_decay), "weight_decay",
          "must be >= 0 " + got(o.weight_decay));
  r.read("max_steps", &o.max_steps);
  r.check(o.max_steps >= 0, "max_steps",
          "must be >= 0 " + got(static_cast<double>(o.max_steps)) + "; 0 = no cap");
  if (r.status().ok()) {
    nlohmann::json loss;
    r.read_raw("loss", &loss);
    auto parsed = parse_local_loss_options(loss, r.path() + ".loss");
    if (parsed.ok()) {
      o.loss = std::move(parsed).value();
    } else {
      r.absorb(parsed.status());
    }
  }
  if (r.status().ok()) {
    nlohmann::json augment;
    r.read_raw("augment", &augment);
    auto parsed = parse_augment_options(augment, r.path() + ".augment");
    if (parsed.ok()) {
      o.augment = std::move(parsed).value();
    } else {
      r.absorb(parsed.status());
    }
  }
  FEDTAIL_RETURN_IF_ERROR(r.finish());
  return o;
}

Result<EvalOptions> parse_eval_options(const nlohmann::json& json, const std::string& path) {
  EvalOptions o;
  JsonReader r(json, path);
  r.read("batch_size", &o.batch_size);
  r.check(o.batch_size >= 1, "batch_size", "must be >= 1 " + got(o.batch_size));
  r.read("mask_absent_classes", &o.mask_absent_classes);
  r.read("every", &o.every);
  r.check(o.every >= 1, "every", "must be >= 1 " + got(o.every));
  FEDTAIL_RETURN_IF_ERROR(r.finish());
  return o;
}

}  // namespace fedtail
