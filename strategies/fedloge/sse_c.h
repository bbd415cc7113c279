// SSE-C: FedLoGe's Static Sparse Equiangular Classifier, as the FedLoGe authors' code builds it:
// the fixed head the shared backbone is trained against.
//
// Construction, as the reference code's ETF_Classifier + gen_sparse_ETF does it:
//   1. P = the Q factor of a d×K matrix of uniform [0, 1) draws (PᵀP = I_K; needs d >= K);
//      M = sqrt(K/(K−1)) · P · (I_K − 11ᵀ/K): a simplex ETF, unit columns, pairwise cos −1/(K−1).
//   2. ⌊sparsity·d·K⌋ of the d·K entries, drawn uniformly without replacement, are set to 0.
//   3. The surviving entries are re-optimised by Adam (lr, betas 0.9/0.999, eps 1e-8; the gradient
//      is multiplied by the non-zero mask, so zeros stay zero) for `steps` steps on
//        Σ_c (‖m_c‖ − column_norm)²  −  mean_c arccos(clamp(max_{j≠c} cos(m_c, m_j), ±0.99999)),
//      i.e. equal column norms and a maximal minimum angle.
//   4. The bias is drawn like nn.Linear's default, U(±1/√d); it is never trained.
// The head weight is Mᵀ (K×d, nn.Linear layout: row c is class c's vector).
//
// Differences from the reference, none of which changes the method: the optimisation runs in
// double precision on the CPU with a hand-derived gradient (the reference: float32 autograd on
// CUDA); P comes from Gram–Schmidt with re-orthogonalisation, whose column signs may differ from
// LAPACK's Householder QR (any orthonormal basis gives the same ETF geometry); ties in the max over
// j go to the lowest index; values below float32's range (|x| < 7e-46 for entries, 1e-150 for
// Adam's moments) are set to 0 during the optimisation, which float32 storage would do anyway and
// which keeps the arithmetic out of the (slow) subnormals. The objective itself sparsifies: a few
// surviving entries decay to 0, so the float32 weight can hold slightly more than ⌊sparsity·d·K⌋
// zeros (SseCStats::zeros vs ::pruned). Every draw comes from the Rng, in a fixed order, and the
// arithmetic is single-threaded, BLAS-free and in a fixed order, so the result is a function of
// (d, K, options, Rng state).
//
// Cost: O(steps · d · (nnz per row)² ) for the Gram matrix, the dominant term; see the strategy
// report for timings (about 0.05 s at d=64/K=10, under a second at d=512/K=10, seconds at
// d=512/K=100).
//
// Free functions; reentrant.
#ifndef FEDTAIL_STRATEGIES_FEDLOGE_SSE_C_H_
#define FEDTAIL_STRATEGIES_FEDLOGE_SSE_C_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"

namespace fedtail::strategies {

struct SseCOptions {
  // Fraction of the d·K entries set to zero, in [0, 1). 0 = a dense ETF (still re-optimised for
  // the column norm). Published value 0.6.
  double sparsity = 0.6;
  // Target L2 norm of every class vector, > 0. Published value 0.1 (it acts as a logit
  // temperature).
  double column_norm = 0.1;
  // Adam steps of the re-optimisation, >= 0. Published value 10,000. 0 = no re-optimisation:
  // each column of the pruned ETF is scaled to column_norm instead (with sparsity 0: the exact
  // dense simplex ETF at that norm; the re-optimisation moves single angles by a few tenths of a
  // degree, the mean angle stays exact).
  int64_t steps = 10000;
  // Adam learning rate, > 0. Published value 1e-4.
  double lr = 1e-4;
};

// Geometry of a built SSE-C, measured on its float32 weights (angles in degrees).
struct SseCStats {
  int64_t pruned = 0;    // entries pruned (held at 0): ⌊sparsity·d·K⌋
  int64_t zeros = 0;     // entries exactly 0 in the float32 weight: the pruned ones, plus
                         // survivors the re-optimisation drove below float32's range
  double mean_norm = 0;  // column (class vector) norms
  double min_norm = 0;
  double max_norm = 0;
  double mean_angle = 0;  // over all pairs of distinct classes
  double min_angle = 0;
  double max_angle = 0;
  double target_angle = 0;  // arccos(−1/(K−1)), the simplex ETF's angle
  double final_loss = 0;    // the objective above after the last step
  int64_t steps = 0;        // Adam steps taken
  double seconds = 0;       // wall time of build_sse_c (not part of the geometry)

  // {"zeros", "mean_norm", ..., "steps"}; `with_time` adds "seconds" (leave it out of anything
  // that must be reproducible).
  nlohmann::json to_json(bool with_time = false) const;
};

struct SseC {
  int64_t feature_dim = 0;    // d
  int64_t num_classes = 0;    // K
  std::vector<float> weight;  // K×d, row-major (the Linear weight)
  std::vector<float> bias;    // K
  SseCStats stats;
};

// Builds the SSE-C for d = feature_dim, K = num_classes with draws from `rng` (d·K for P, then the
// zero positions, then K for the bias). kInvalidArgument when K < 2, d < K, an option is out of
// range, or the sparsity leaves a class without any entry; kInternal when the random matrix is
// rank-deficient (practically never).
Result<SseC> build_sse_c(int64_t feature_dim, int64_t num_classes, const SseCOptions& options,
                         Rng& rng);

// The geometry of a K×d weight (row-major); pruned, final_loss, steps and seconds are left 0.
// Precondition: weight.size() == K·d, K >= 2.
SseCStats measure_sse_c(const std::vector<float>& weight, int64_t num_classes, int64_t feature_dim);

// The clamp bound on the cosine inside arccos (the reference's 0.99999).
inline constexpr double kSseCCosineClamp = 0.99999;

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDLOGE_SSE_C_H_
