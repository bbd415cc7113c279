// ClientSecAgg and share_commitment (declared in common/privacy/secagg.h); ServerSecAgg is in
// secagg_server.cc, the message field readers and the share plaintext codec in secagg_codec.cc.
#include "common/privacy/secagg.h"

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/privacy/secagg_codec.h"
#include "common/security/crypto.h"

namespace fedtail::privacy {

using nlohmann::json;

using secagg_codec::get_array;
using secagg_codec::get_field;
using secagg_codec::get_hex;
using secagg_codec::get_id_list;
using secagg_codec::get_key;
using secagg_codec::get_string;
using secagg_codec::kMaskInfo;
using secagg_codec::kShareInfo;

namespace {

std::string key_hex(const Key32& k) { return to_hex(k.data(), k.size()); }

}  // namespace

std::string share_commitment(const std::string& owner, const std::string& holder, char kind,
                             const std::string& encoded_share) {
  std::string msg = "fedtail-secagg-commit|" + owner + "|" + holder + "|";
  msg.push_back(kind);
  msg += "|";
  msg += encoded_share;
  return to_hex(sha256(msg));
}

// ===================================== ClientSecAgg =====================================

ClientSecAgg::ClientSecAgg(std::string client_id, uint64_t round)
    : id_(std::move(client_id)), round_(round) {}

json ClientSecAgg::advertise() {
  if (stage_ == Stage::kNew) {
    c_ = generate_key_pair();
    s_ = generate_key_pair();
    b_ = random_key();
    stage_ = Stage::kAdvertised;
  }
  // A repeated call returns the same public keys: never fresh keys, which would break the round.
  return json{{"c_pk", key_hex(c_.public_key)}, {"s_pk", key_hex(s_.public_key)}};
}

Result<json> ClientSecAgg::share(const json& request) {
  if (stage_ != Stage::kAdvertised) return Status::FailedPrecondition("secagg share: out of order");
  const std::string where = "share request";
  if (!request.is_object()) return Status::InvalidArgument(where + ": must be an object");
  const json* threshold_json = nullptr;
  FEDTAIL_RETURN_IF_ERROR(get_field(request, "threshold", where, &threshold_json));
  const json* list = nullptr;
  FEDTAIL_RETURN_IF_ERROR(get_array(request, "neighbours", where, &list));
  if (list->empty() || list->size() > secagg_codec::kMaxNeighbours) {
    return Status::InvalidArgument(where + ".neighbours: must hold 1.." +
                                   std::to_string(secagg_codec::kMaxNeighbours) + " clients (got " +
                                   std::to_string(list->size()) + ")");
  }
  if (!threshold_json->is_number_integer()) {
    return Status::InvalidArgument(where + ".threshold: must be an integer");
  }
  // Parsed JSON holds non-negative integers as unsigned, built JSON as signed: accept both.
  const bool in_range =
      threshold_json->is_number_unsigned()
          ? threshold_json->get<uint64_t>() >= 1 && threshold_json->get<uint64_t>() <= list->size()
          : threshold_json->get<int64_t>() >= 1 &&
                static_cast<uint64_t>(threshold_json->get<int64_t>()) <= list->size();
  if (!in_range) {
    return Status::InvalidArgument(where + ".threshold: must be in [1, " +
                                   std::to_string(list->size()) + "] (got " +
                                   threshold_json->dump() + ")");
  }
  const int threshold = static_cast<int>(threshold_json->get<int64_t>());

  // Validate everything before any state changes.
  std::vector<std::string> ids;
  std::map<std::string, Neighbour> neighbours;
  std::vector<Key32> share_keys;
  for (size_t i = 0; i < list->size(); ++i) {
    const json& e = (*list)[i];
    const std::string name = where + ".neighbours[" + std::to_string(i) + "]";
    std::string id;
    Neighbour n;
    FEDTAIL_RETURN_IF_ERROR(get_string(e, "id", name, &id));
    FEDTAIL_RETURN_IF_ERROR(get_key(e, "c_pk", name, &n.c_pk));
    FEDTAIL_RETURN_IF_ERROR(get_key(e, "s_pk", name, &n.s_pk));
    if (!secagg_codec::valid_id(id))
      return Status::InvalidArgument(name + ".id: empty or contains '|'");
    if (id == id_) return Status::InvalidArgument(name + ".id: lists this client");
    if (!ids.empty() && !(ids.back() < id)) {
      return Status::InvalidArgument(name + ".id: not sorted or duplicate (" + id + ")");
    }
    Result<Key32> ck = agreed_key(c_.secret, n.c_pk, kShareInfo);
    if (!ck.ok()) return ck.status().with_context(name + ".c_pk");
    Result<Key32> sk = agreed_key(s_.secret, n.s_pk, kMaskInfo);
    if (!sk.ok()) return sk.status().with_context(name + ".s_pk");
    ids.push_back(id);
    share_keys.push_back(*ck);
    neighbours.emplace(id, n);
  }

  const int count = static_cast<int>(ids.size());
  Result<std::vector<Share>> b_shares = shamir_split(secagg_codec::key_bytes(b_), threshold, count);
  if (!b_shares.ok()) return b_shares.status().with_context(where);
  Result<std::vector<Share>> s_shares =
      shamir_split(secagg_codec::key_bytes(s_.secret), threshold, count);
  if (!s_shares.ok()) return s_shares.status().with_context(where);

  json out = json::array();
  for (int i = 0; i < count; ++i) {
    // shamir_split gives x = i + 1 to share i: neighbour i's x is 1 + its index in the sorted list.
    const Share& bs = (*b_shares)[i];
    const Share& ss = (*s_shares)[i];
    const std::string& to = ids[i];
    const secagg_codec::SharePlaintext plain{id_, to, round_, encode_share(bs), encode_share(ss)};
    const std::string sealed = aead_seal(share_keys[i], secagg_codec::encode_plaintext(plain),
                                         secagg_codec::associated_data(round_, id_, to));
    out.push_back(json{{"to", to},
                       {"sealed", to_hex(sealed)},
                       {"commit_b", share_commitment(id_, to, 'b', plain.b_share)},
                       {"commit_s", share_commitment(id_, to, 's', plain.s_share)}});
  }
  neighbours_ = std::move(neighbours);
  threshold_ = threshold;
  stage_ = Stage::kShared;
  return json{{"shares", std::move(out)}};
}

Result<json> ClientSecAgg::receive(const json& request) {
  if (stage_ != Stage::kShared) return Status::FailedPrecondition("secagg receive: out of order");
  const std::string where = "receive request";
  const json* list = nullptr;
  FEDTAIL_RETURN_IF_ERROR(get_array(request, "shares", where, &list));
  struct Entry {
    std::string from, sealed_hex, commit_b, commit_s;
  };
  std::vector<Entry> entries;
  std::map<std::string, int> count;
  for (size_t i = 0; i < list->size(); ++i) {
    const json& e = (*list)[i];
    const std::string name = where + ".shares[" + std::to_string(i) + "]";
    Entry entry;
    FEDTAIL_RETURN_IF_ERROR(get_string(e, "from", name, &entry.from));
    FEDTAIL_RETURN_IF_ERROR(get_string(e, "sealed", name, &entry.sealed_hex));
    FEDTAIL_RETURN_IF_ERROR(get_string(e, "commit_b", name, &entry.commit_b));
    FEDTAIL_RETURN_IF_ERROR(get_string(e, "commit_s", name, &entry.commit_s));
    ++count[entry.from];
    entries.push_back(std::move(entry));
  }

  std::map<std::string, std::string> rejected;  // from -> reason
  std::map<std::string, std::pair<Share, Share>> good;
  for (const Entry& e : entries) {
    if (rejected.count(e.from) != 0) continue;
    auto reject = [&](const std::string& reason) { rejected[e.from] = reason; };
    auto it = neighbours_.find(e.from);
    if (it == neighbours_.end()) {
      reject("not a neighbour");
      continue;
    }
    if (count[e.from] > 1) {
      reject("more than one share");
      continue;
    }
    // Bad hex is the sender's fault: a rejection, not a malformed request.
    json holder = {{"sealed", e.sealed_hex}};
    std::string sealed;
    if (!get_hex(holder, "sealed", "share", 0, secagg_codec::kMaxBlobBytes, &sealed).ok()) {
      reject("sealed: not hex");
      continue;
    }
    Result<Key32> key = agreed_key(c_.secret, it->second.c_pk, kShareInfo);
    if (!key.ok()) {
      reject("no share key");
      continue;
    }
    Result<std::string> plain =
        aead_open(*key, sealed, secagg_codec::associated_data(round_, e.from, id_));
    if (!plain.ok()) {
      reject("sealed: not authentic");
      continue;
    }
    Result<secagg_codec::SharePlaintext> p = secagg_codec::decode_plaintext(*plain);
    if (!p.ok()) {
      reject("plaintext: malformed");
      continue;
    }
    const std::string& b_bytes = p->b_share;
    const std::string& s_bytes = p->s_share;
    if (p->from != e.from || p->to != id_ || p->round != round_) {
      reject("plaintext: names the wrong sender, recipient or round");
      continue;
    }
    Result<Share> b = secagg_codec::decode_key_share(b_bytes);
    Result<Share> s = secagg_codec::decode_key_share(s_bytes);
    if (!b.ok() || !s.ok() || b->x != s->x) {
      reject("plaintext: malformed share");
      continue;
    }
    if (!constant_time_equal(share_commitment(e.from, id_, 'b', b_bytes), e.commit_b) ||
        !constant_time_equal(share_commitment(e.from, id_, 's', s_bytes), e.commit_s)) {
      reject("share does not match its commitment");
      continue;
    }
    good[e.from] = {std::move(b).value(), std::move(s).value()};
  }

  json accepted = json::array();
  for (auto& [from, shares] : good) {
    if (rejected.count(from) != 0) continue;
    Neighbour& n = neighbours_[from];
    n.accepted = true;
    n.b_share = std::move(shares.first);
    n.s_share = std::move(shares.second);
    accepted.push_back(from);
  }
  json rejected_json = json::array();
  for (const auto& [from, reason] : rejected) {
    rejected_json.push_back(json{{"from", from}, {"reason", reason}});
  }
  stage_ = Stage::kReceived;
  return json{{"accepted", std::move(accepted)}, {"rejected", std::move(rejected_json)}};
}

Status ClientSecAgg::mask(const std::vector<std::string>& active, uint32_t* words, size_t n) {
  if (stage_ != Stage::kReceived) return Status::FailedPrecondition("secagg mask: out of order");
  if (words == nullptr && n != 0) return Status::InvalidArgument("secagg mask: words is null");
  std::set<std::string> set;
  std::vector<std::pair<Key32, int>> seeds;
  for (const std::string& v : active) {
    auto it = neighbours_.find(v);
    if (it == neighbours_.end() || !it->second.accepted) {
      return Status::InvalidArgument("secagg mask: active neighbour " + v +
                                     " is not a neighbour whose share was accepted");
    }
    if (!set.insert(v).second) {
      return Status::InvalidArgument("secagg mask: active neighbour " + v + " listed twice");
    }
    Result<Key32> seed = agreed_key(s_.secret, it->second.s_pk, kMaskInfo);
    if (!seed.ok()) return seed.status().with_context("secagg mask: neighbour " + v);
    seeds.emplace_back(*seed, secagg_codec::sign_of(id_, v));
  }
  if (static_cast<int>(set.size()) < threshold_) {
    return Status::FailedPrecondition("secagg mask: " + std::to_string(set.size()) +
                                      " active neighbours, fewer than the threshold " +
                                      std::to_string(threshold_));
  }
  apply_mask(b_, +1, words, n);
  for (const auto& [seed, sign] : seeds) apply_mask(seed, sign, words, n);
  active_ = std::move(set);
  stage_ = Stage::kMasked;
  return Status::OK();
}

Result<json> ClientSecAgg::unmask(const json& request) {
  if (stage_ != Stage::kMasked) return Status::FailedPrecondition("secagg unmask: out of order");
  const std::string where = "unmask request";
  std::vector<std::string> survivors, dropped;
  FEDTAIL_RETURN_IF_ERROR(get_id_list(request, "survivors", where, &survivors));
  FEDTAIL_RETURN_IF_ERROR(get_id_list(request, "dropped", where, &dropped));
  const std::set<std::string> survivor_set(survivors.begin(), survivors.end());
  for (const std::string& v : dropped) {
    if (survivor_set.count(v) != 0) {
      return Status::InvalidArgument(where + ": " + v + " is both a survivor and dropped");
    }
  }
  // Both lists must name active neighbours (active_ holds only accepted ones): revealing shares of
  // anyone else would help a coordinator that lies about who took part.
  for (const auto* list : {&survivors, &dropped}) {
    for (const std::string& v : *list) {
      if (active_.count(v) == 0) {
        return Status::InvalidArgument(where + ": " + v + " is not an active neighbour");
      }
    }
  }
  json b_shares = json::array();
  for (const std::string& v : survivors) {
    b_shares.push_back(json{{"of", v}, {"share", to_hex(encode_share(neighbours_[v].b_share))}});
  }
  json s_shares = json::array();
  for (const std::string& v : dropped) {
    s_shares.push_back(json{{"of", v}, {"share", to_hex(encode_share(neighbours_[v].s_share))}});
  }
  // One answer per round: a second request could ask for the other secret of the same client.
  stage_ = Stage::kDone;
  return json{{"b_shares", std::move(b_shares)}, {"s_shares", std::move(s_shares)}};
}

}  // namespace fedtail::privacy
