#include "coordinator/refusals.h"

#include <string>

namespace fedtail::coordinator {
namespace {

nlohmann::json zeros() {
  nlohmann::json counts = nlohmann::json::object();
  for (const char* kind : kRefusalKinds) counts[kind] = 0;
  counts["total"] = 0;
  return counts;
}

uint64_t count_at(const nlohmann::json& counts, const char* kind) {
  if (!counts.is_object()) return 0;
  auto it = counts.find(kind);
  return it != counts.end() && it->is_number_unsigned() ? it->get<uint64_t>() : 0;
}

}  // namespace

Refusal classify_bundle_error(const Status& status) {
  if (status.code() == StatusCode::kResourceExhausted) return Refusal::kOversized;
  // BundleDecoder's only kInvalidArgument: a header that is not DecodeLimits::expected.
  if (status.code() == StatusCode::kInvalidArgument) return Refusal::kIncompatibleUpdate;
  const std::string& message = status.message();
  if (message.find("digest mismatch") != std::string::npos) return Refusal::kDigestMismatch;
  if (message.find("non-finite") != std::string::npos) return Refusal::kNonFinite;
  return Refusal::kCorruptBundle;
}

nlohmann::json RefusalCounters::snapshot() const {
  nlohmann::json counts = nlohmann::json::object();
  uint64_t total = 0;
  for (size_t k = 0; k < kRefusalKinds.size(); ++k) {
    const uint64_t n = counts_[k].load();
    counts[kRefusalKinds[k]] = n;
    total += n;
  }
  counts["total"] = total;
  return counts;
}

nlohmann::json refusal_delta(const nlohmann::json& later, const nlohmann::json& earlier) {
  nlohmann::json counts = zeros();
  uint64_t total = 0;
  for (const char* kind : kRefusalKinds) {
    const uint64_t now = count_at(later, kind);
    const uint64_t before = count_at(earlier, kind);
    counts[kind] = now >= before ? now - before : now;
    total += counts[kind].get<uint64_t>();
  }
  counts["total"] = total;
  return counts;
}

std::string describe_refusals(const nlohmann::json& counts) {
  std::string text;
  for (const char* kind : kRefusalKinds) {
    const uint64_t n = count_at(counts, kind);
    if (n == 0) continue;
    if (!text.empty()) text += ", ";
    text += std::string(kind) + " " + std::to_string(n);
  }
  return text.empty() ? "none" : text;
}

nlohmann::json sum_refusals(const std::vector<nlohmann::json>& lines) {
  nlohmann::json sum = zeros();
  uint64_t total = 0;
  for (const nlohmann::json& line : lines) {
    auto refused = line.find("refused");
    if (refused == line.end() || !refused->is_object()) continue;
    for (const char* kind : kRefusalKinds) {
      const uint64_t n = count_at(*refused, kind);
      sum[kind] = sum[kind].get<uint64_t>() + n;
      total += n;
    }
  }
  sum["total"] = total;
  return sum;
}

}  // namespace fedtail::coordinator
