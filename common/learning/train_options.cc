#include "common/learning/train_options.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/base/json_reader.h"

namespace fedtail {

namespace {

std::string got(double v) {
  std::ostringstream s;
  s << "(got " << v << ")";
  return s.str();
}

}  // namespace

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
