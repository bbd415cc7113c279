// PrototypeSet: per-class feature prototypes, the only thing prototype-based strategies (FedSA,
// FedProto) send between clients and coordinator, and its wire form.
//
// A set holds C rows of D floats (row c = the prototype of class c, the mean feature of its
// examples) and C counts; a class with count 0 is absent and its row is 0. On the wire (and in
// checkpoints) a set is two tensors:
//   "prototypes"  float32 [C, D]
//   "counts"      int64   [C]     >= 0
// What a count means depends on who sends it: a client sends 1 for each class it holds (or, with
// the strategy's `weighted` option, the number of features averaged into the row); the server's
// global set counts the clients behind each row (or the summed counts, when weighted).
//
// Torch-free (the coordinator aggregates without LibTorch). Plain value type; functions are
// reentrant.
#ifndef FEDTAIL_STRATEGIES_PROTOTYPES_PROTOTYPE_SET_H_
#define FEDTAIL_STRATEGIES_PROTOTYPES_PROTOTYPE_SET_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"

namespace fedtail::strategies {

// Tensor names on the wire.
inline constexpr char kPrototypesTensor[] = "prototypes";
inline constexpr char kCountsTensor[] = "counts";

struct PrototypeSet {
  int64_t num_classes = 0;      // C
  int64_t feature_dim = 0;      // D
  std::vector<float> rows;      // C×D, row-major; rows of absent classes are 0
  std::vector<int64_t> counts;  // C; 0 = absent

  // An empty set (every class absent) of C×D.
  static PrototypeSet empty(int64_t num_classes, int64_t feature_dim);

  bool present(int64_t c) const { return counts[static_cast<size_t>(c)] > 0; }
  // Number of classes with count > 0.
  int64_t num_present() const;
  const float* row(int64_t c) const { return rows.data() + c * feature_dim; }
};

// Appends "prototypes" and "counts" (copies) to `bundle`. kInvalidArgument when the set's sizes
// are inconsistent or `bundle` already holds one of the names.
Status add_prototype_tensors(const PrototypeSet& set, TensorBundle* bundle);

// Reads "prototypes" and "counts" from `bundle`, which must have them as float32 [C, D] and int64
// [C] with counts >= 0 (other tensors are ignored: the caller checks the bundle's names). `what`
// names the bundle in errors ("update of client-3"). kInvalidArgument naming the tensor otherwise:
//   update of client-3: tensor "prototypes": float32 [10,32] != expected float32 [10,64]
Result<PrototypeSet> read_prototype_tensors(const TensorBundle& bundle, int64_t num_classes,
                                            int64_t feature_dim, const std::string& what);

// OK when the names of `bundle`'s tensors are exactly `expected` (any order); otherwise
// kInvalidArgument naming the first unexpected or missing tensor, prefixed by `what`.
Status check_tensor_names(const TensorBundle& bundle, const std::vector<std::string>& expected,
                          const std::string& what);

// Distances between the rows of a set's present classes (Euclidean, computed in double).
struct NearestDistances {
  int64_t classes = 0;  // rows considered (present classes)
  // Over those rows, of the distance to the nearest other row: the minimum, the mean and the
  // maximum. The mean is FedSA's "gap" (its authors' code). All -inf when classes < 2.
  double min = 0;
  double mean = 0;
  double max = 0;

  // {"classes", "min", "mean", "max"}; -inf becomes null.
  nlohmann::json to_json() const;
};

// The nearest-neighbour statistics of the present rows of `set`.
NearestDistances nearest_distances(const PrototypeSet& set);

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_PROTOTYPES_PROTOTYPE_SET_H_
