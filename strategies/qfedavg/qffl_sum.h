// QfflSum: the streaming sums of one q-FedAvg round (Li, Sanjabi, Beirami & Smith, "Fair Resource
// Allocation in Federated Learning", ICLR 2020, Algorithm 2), folded in as the clients' models
// arrive, in O(model) memory whatever the number of clients.
//
// With w the global model the round's clients started from, w̄_k client k's trained model, F_k the
// loss of w on client k's training data, q >= 0 and L > 0 (the authors' 1 / learning rate), as the
// authors' code (github.com/litian96/fair_flearn, flearn/trainers/qffedavg.py) computes them:
//   a_k = (F_k + ε)^q                                           ε = kQfflLossEpsilon = 1e-10
//   Δ_k = a_k · L (w − w̄_k)
//   h_k = q (F_k + ε)^(q−1) · ‖L (w − w̄_k)‖² + L · a_k
//   w'  = w − Σ_k Δ_k / Σ_k h_k
// The sums kept are D = Σ_k a_k (w − w̄_k) per element and H = Σ_k h_k, so w' = w − L·D / H:
// w' = w + s · (m − w), where m = Σ a_k w̄_k / Σ a_k is the a-weighted mean of the clients' models
// and s = L Σ a_k / H ∈ (0, 1] is the step (1 when q = 0).
//
// Which tensors:
//   - ‖·‖² sums over `norm_names` only (the model's trainable parameters: the gradient the norm
//     estimates is a gradient with respect to them; the authors' TensorFlow models have no other
//     variables). Flower's QFedAvg sums over every array it is given, BatchNorm statistics
//     included.
//   - The update w' applies to every floating-point tensor (parameters and BatchNorm running
//     statistics alike: Flower's choice; w' is a convex combination of w and the w̄_k, so running
//     variances stay >= 0).
//   - Integer and bool tensors (BatchNorm's num_batches_tracked) take the plain mean of the
//     clients' values, rounded to the nearest integer, ties away from zero (WeightedAverage with
//     weight 1 each): the q = 0 limit of the rule. (Flower turns them into floats.)
// Arithmetic: elements are widened exactly to double; D and H are plain double sums, so the
// arrival order of the updates can change their last bits (rarely visible after the single rounding
// of w' to the tensor's dtype in finish()).
//
// q = 0 (any L): a_k = 1, h_k = L, so w' = w − Σ_k (w − w̄_k) / K = (1/K) Σ_k w̄_k: the unweighted
// mean of the clients' models (FedAvg with equal weights, not example-weighted).
//
// Thread-compatible: one thread at a time (the round engine's contract for an Aggregation).
#ifndef FEDTAIL_STRATEGIES_QFEDAVG_QFFL_SUM_H_
#define FEDTAIL_STRATEGIES_QFEDAVG_QFFL_SUM_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/weighted_average.h"

namespace fedtail::strategies {

// Added to F_k before the powers (the authors' code and Flower's): keeps (F_k + ε)^(q−1) finite
// for F_k = 0.
inline constexpr double kQfflLossEpsilon = 1e-10;

// One client's terms (file comment).
struct QfflTerms {
  double loss = 0;              // F_k
  double weight = 0;            // a_k = (F_k + ε)^q
  double squared_distance = 0;  // ‖w − w̄_k‖² over the norm tensors (without L)
  double h = 0;                 // h_k
};

// The terms of a client with loss `loss` (F_k) and ‖w − w̄_k‖² = `squared_distance`, for `q` and
// `lipschitz` (L). No checks: the caller passes finite F_k >= 0, q >= 0, L > 0.
QfflTerms qffl_terms(double loss, double squared_distance, double q, double lipschitz);

class QfflSum {
 public:
  // Empty sums for models shaped like `global` (w; shared, not copied, and must stay unchanged;
  // its values are read by add() and finish()). `norm_names`: the tensors of ‖w − w̄_k‖², each a
  // floating-point tensor of `global`. kInvalidArgument for a null or empty global, a norm name
  // that is not a floating-point tensor of it, q < 0 or not finite, L <= 0 or not finite;
  // kResourceExhausted when the sums (8 bytes per floating-point element, 16 per integer one)
  // cannot be allocated.
  static Result<QfflSum> create(std::shared_ptr<const TensorBundle> global,
                                const std::vector<std::string>& norm_names, double q,
                                double lipschitz);

  QfflSum(QfflSum&&) noexcept = default;
  QfflSum& operator=(QfflSum&&) noexcept = default;
  QfflSum(const QfflSum&) = delete;
  QfflSum& operator=(const QfflSum&) = delete;

  // Folds in client model `model` (w̄_k) with loss `loss` (F_k) and returns its terms. Checked
  // before anything is added, so a refused model leaves the sums unchanged: kInvalidArgument when
  // `model` does not have exactly the global tensors (check_compatible's message, naming the
  // tensor), when `loss` is not finite or < 0, or when a_k or h_k is not finite and > 0 (an
  // overflow or underflow of the powers, or a model too far from w). `model` is borrowed for the
  // call.
  Result<QfflTerms> add(const TensorBundle& model, double loss);

  // As add(), with `gate` called exactly once after every check above has passed (the terms are
  // computed) and before anything is folded in; nothing after it can fail. When `gate` returns an
  // error, add returns that error and the sums stay unchanged. So a caller can make the fold
  // depend on a second consumer accepting the same update (q-FedAvg's aggregation hands the
  // model to FedAvg's Aggregation there): the update enters both or neither. `gate` must not
  // change `model`.
  Result<QfflTerms> add(const TensorBundle& model, double loss,
                        const std::function<Status()>& gate);

  // The new global model w' (file comment) as a new bundle with the global's names, dtypes,
  // shapes and order, and empty metadata. The sums are unchanged. kFailedPrecondition when no
  // model has been added; kInvalidArgument when H or a value of w' is not finite (naming the
  // tensor).
  Result<TensorBundle> finish() const;

  int64_t updates() const { return updates_; }
  // Σ_k a_k and H = Σ_k h_k so far.
  double weight_sum() const { return weight_sum_; }
  double h_sum() const { return h_sum_; }
  double q() const { return q_; }
  double lipschitz() const { return lipschitz_; }

 private:
  // One global tensor.
  struct Slot {
    size_t index;   // in the global bundle
    bool floating;  // floating-point: in sums_; else in the integer mean
    bool in_norm;   // part of ‖w − w̄_k‖²
    size_t offset;  // floating: into sums_
  };

  QfflSum() = default;

  // Constant after create().
  std::shared_ptr<const TensorBundle> global_;
  std::vector<Slot> slots_;  // in global order
  double q_ = 0;
  double lipschitz_ = 0;

  std::vector<double> sums_;  // D = Σ_k a_k (w − w̄_k), every floating-point element
  // The plain mean of the integer and bool tensors, over a bundle of just those; empty when the
  // model has none.
  std::optional<WeightedAverage> integers_;
  int64_t updates_ = 0;
  double weight_sum_ = 0;
  double h_sum_ = 0;
};

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_QFEDAVG_QFFL_SUM_H_
