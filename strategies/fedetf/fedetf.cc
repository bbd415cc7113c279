// FedETF's parts both halves share: the options, the simplex ETF, the folded head and the
// registration. The server is fedetf_server.cc, the client fedetf_client.cc.
#include "strategies/fedetf/fedetf.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "common/base/json_reader.h"
#include "common/wire/dtype.h"

namespace fedtail::strategies {

namespace {

// kInvalidArgument unless `bundle` holds `name` as a float32 tensor of shape `shape`.
Status check_float_tensor(const TensorBundle& bundle, const std::string& name,
                          const std::vector<int64_t>& shape, const std::string& where) {
  const NamedTensor* t = bundle.find(name);
  if (t == nullptr) return Status::InvalidArgument(where + ": tensor \"" + name + "\": missing");
  if (t->dtype() != DType::kFloat32 || t->shape() != shape) {
    return Status::InvalidArgument(where + ": tensor \"" + name + "\": " + dtype_name(t->dtype()) +
                                   " " + shape_to_string(t->shape()) + " != expected float32 " +
                                   shape_to_string(shape));
  }
  return Status::OK();
}

// "-1", "0.05", "inf": the value as a user would write it.
std::string format_number(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

}  // namespace

Result<FedEtfOptions> parse_fedetf_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  FedEtfOptions o;
  read_round_options(reader, &o.round);
  std::string finetune_at = "final";
  reader.read_enum("finetune_at", &finetune_at, {"final", "every"});
  o.finetune_every = finetune_at == "every";
  reader.read("finetune_cycles", &o.finetune_cycles);
  reader.read("finetune_epochs", &o.finetune_epochs);
  reader.read("etf_lr", &o.etf_lr);
  reader.read("projection_lr", &o.projection_lr);
  reader.check(o.finetune_cycles >= 0, "finetune_cycles",
               "must be >= 0 (got " + std::to_string(o.finetune_cycles) + ")");
  reader.check(o.finetune_epochs >= 1, "finetune_epochs",
               "must be >= 1 (got " + std::to_string(o.finetune_epochs) + ")");
  reader.check(std::isfinite(o.etf_lr) && o.etf_lr > 0, "etf_lr",
               "must be > 0 (got " + format_number(o.etf_lr) + ")");
  reader.check(std::isfinite(o.projection_lr) && o.projection_lr > 0, "projection_lr",
               "must be > 0 (got " + format_number(o.projection_lr) + ")");
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return o;
}

Result<NamedTensor> make_simplex_etf(int64_t num_classes, Rng& rng) {
  const int64_t k = num_classes;
  if (k < 2) {
    return Status::InvalidArgument("simplex ETF: needs at least 2 classes (got " +
                                   std::to_string(k) + ")");
  }
  if (k > std::numeric_limits<int32_t>::max() / k) {
    return Status::InvalidArgument("simplex ETF: " + std::to_string(k) + " classes are too many");
  }
  const size_t n = static_cast<size_t>(k);
  // A = d×K uniform draws, drawn row by row (numpy's random(size=(d, K))), kept by column:
  // q[j·d + r] = A[r][j]. Plain C++ in double, not LAPACK: the same bits wherever the same
  // compiler flags run, whatever the BLAS or thread count.
  std::vector<double> q(n * n);
  for (size_t r = 0; r < n; ++r) {
    for (size_t j = 0; j < n; ++j) q[j * n + r] = rng.uniform();
  }
  // Gram–Schmidt, each column orthogonalised twice against the previous ones: orthonormal to
  // rounding ("twice is enough", Giraud et al. 2005), so that PᵀP = I.
  for (size_t j = 0; j < n; ++j) {
    double* v = &q[j * n];
    double original = 0;
    for (size_t r = 0; r < n; ++r) original += v[r] * v[r];
    for (int pass = 0; pass < 2; ++pass) {
      for (size_t i = 0; i < j; ++i) {
        const double* u = &q[i * n];
        double dot = 0;
        for (size_t r = 0; r < n; ++r) dot += u[r] * v[r];
        for (size_t r = 0; r < n; ++r) v[r] -= dot * u[r];
      }
    }
    double norm = 0;
    for (size_t r = 0; r < n; ++r) norm += v[r] * v[r];
    norm = std::sqrt(norm);
    if (!(norm > 1e-10 * std::sqrt(original))) {
      return Status::Internal("simplex ETF: the random draws are linearly dependent (column " +
                              std::to_string(j) + ")");
    }
    for (size_t r = 0; r < n; ++r) v[r] /= norm;
  }
  // M = sqrt(K/(K−1)) · P (I − 11ᵀ/K): column j is sqrt(K/(K−1)) · (p_j − mean of the columns).
  std::vector<double> mean(n, 0.0);
  for (size_t j = 0; j < n; ++j) {
    for (size_t r = 0; r < n; ++r) mean[r] += q[j * n + r];
  }
  for (double& m : mean) m /= static_cast<double>(k);
  const double scale = std::sqrt(static_cast<double>(k) / static_cast<double>(k - 1));
  std::vector<float> values(n * n);
  for (size_t r = 0; r < n; ++r) {
    for (size_t j = 0; j < n; ++j) {
      values[r * n + j] = static_cast<float>(scale * (q[j * n + r] - mean[r]));
    }
  }
  return NamedTensor::from_values(kEtfMatrixName, DType::kFloat32, {k, k}, values);
}

Status check_etf_tensors(const TensorBundle& bundle, int64_t num_classes,
                         const std::string& where) {
  FEDTAIL_RETURN_IF_ERROR(
      check_float_tensor(bundle, kEtfMatrixName, {num_classes, num_classes}, where));
  return check_float_tensor(bundle, kEtfTemperatureName, {}, where);
}

std::pair<torch::Tensor, torch::Tensor> fold_etf_head(const torch::Tensor& weight,
                                                      const torch::Tensor& bias,
                                                      const torch::Tensor& matrix,
                                                      double temperature) {
  const torch::Tensor transposed = temperature * matrix.to(torch::kFloat64).t();
  torch::Tensor folded_weight = transposed.matmul(weight.to(torch::kFloat64));
  torch::Tensor folded_bias = transposed.matmul(bias.to(torch::kFloat64));
  return {folded_weight.to(weight.scalar_type()), folded_bias.to(bias.scalar_type())};
}

Result<std::unique_ptr<ServerStrategy>> make_fedetf_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedEtfOptions options, parse_fedetf_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedEtfServer>(options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_fedetf_client(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedEtfOptions options, parse_fedetf_options(config));
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedEtfClient>(options));
}

StrategyEntry fedetf_strategy_entry() {
  return {"fedetf",
          "FedETF: normalised projection on a fixed simplex ETF with a learnable temperature, "
          "balanced loss, local adaptation of ETF and projection (Li et al. 2023)",
          make_fedetf_server, make_fedetf_client};
}

}  // namespace fedtail::strategies
