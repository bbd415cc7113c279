// ServerSecAgg (declared in common/privacy/secagg.h): the coordinator's side of a SecAgg+ round.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <utility>

#include "common/privacy/secagg.h"
#include "common/privacy/secagg_codec.h"
#include "common/security/crypto.h"

namespace fedtail::privacy {

using nlohmann::json;
using secagg_codec::get_array;
using secagg_codec::get_hex;
using secagg_codec::get_id_list;
using secagg_codec::get_key;
using secagg_codec::get_string;

namespace {

constexpr size_t kCommitmentBytes = kSha256Bytes;

Status check_params(const SecAggParams& p) {
  if (p.neighbours < 2 || p.neighbours > static_cast<int>(secagg_codec::kMaxNeighbours) - 1) {
    return Status::InvalidArgument("secagg.neighbours: must be in [2, 254] (got " +
                                   std::to_string(p.neighbours) + ")");
  }
  if (!(p.reconstruction_threshold > 0.0 && p.reconstruction_threshold <= 1.0)) {
    return Status::InvalidArgument("secagg.reconstruction_threshold: must be in (0, 1] (got " +
                                   std::to_string(p.reconstruction_threshold) + ")");
  }
  if (!(p.max_dropout_fraction >= 0.0 && p.max_dropout_fraction < 1.0)) {
    return Status::InvalidArgument("secagg.max_dropout_fraction: must be in [0, 1) (got " +
                                   std::to_string(p.max_dropout_fraction) + ")");
  }
  return Status::OK();
}

// t = max(2, ceil(fraction * |N|)), at most |N|. The epsilon keeps 0.3 * 10 at 3, not 4.
int threshold_for(double fraction, size_t degree) {
  const double scaled = fraction * static_cast<double>(degree);
  const int t = std::max(2, static_cast<int>(std::ceil(scaled - 1e-9)));
  return std::min(t, static_cast<int>(degree));
}

// x of `holder`'s share of `owner_neighbours`' owner: 1 + its index in the sorted neighbour set.
int share_x(const std::set<std::string>& owner_neighbours, const std::string& holder) {
  auto it = owner_neighbours.find(holder);
  if (it == owner_neighbours.end()) return 0;
  return 1 + static_cast<int>(std::distance(owner_neighbours.begin(), it));
}

}  // namespace

ServerSecAgg::ServerSecAgg(SecAggParams params, uint64_t round, Rng rng)
    : params_(params), round_(round), rng_(rng) {}

Status ServerSecAgg::check_dropouts(const std::set<std::string>& remaining,
                                    const char* stage) const {
  const double gone = static_cast<double>(u1_.size() - remaining.size());
  if (gone > params_.max_dropout_fraction * static_cast<double>(u1_.size())) {
    return Status::FailedPrecondition(std::string("secagg ") + stage + ": " +
                                      std::to_string(u1_.size() - remaining.size()) + " of " +
                                      std::to_string(u1_.size()) +
                                      " clients are gone, more than max_dropout_fraction = " +
                                      std::to_string(params_.max_dropout_fraction));
  }
  return Status::OK();
}

Result<std::map<std::string, std::string>> ServerSecAgg::on_advertised(
    const std::map<std::string, json>& replies) {
  if (stage_ != 0) return Status::FailedPrecondition("secagg on_advertised: out of order");
  FEDTAIL_RETURN_IF_ERROR(check_params(params_));
  std::map<std::string, std::string> dropped;
  std::map<std::string, Member> members;
  std::map<Key32, std::vector<std::string>> key_users;
  // A throwaway key pair: X25519 with it is all zeros exactly for the low-order public keys, which
  // would make every neighbour's share() fail.
  const KeyPair probe = generate_key_pair();
  for (const auto& [id, reply] : replies) {
    const std::string where = "advertise reply of " + id;
    Member m;
    Status st = secagg_codec::valid_id(id)
                    ? Status::OK()
                    : Status::InvalidArgument("client id: empty or contains '|'");
    if (st.ok()) st = get_key(reply, "c_pk", where, &m.c_pk);
    if (st.ok()) st = get_key(reply, "s_pk", where, &m.s_pk);
    if (st.ok() && (!x25519(probe.secret, m.c_pk).ok() || !x25519(probe.secret, m.s_pk).ok())) {
      st = Status::InvalidArgument(where + ": a low-order public key");
    }
    if (!st.ok()) {
      dropped[id] = st.message();
      continue;
    }
    key_users[m.c_pk].push_back(id);
    key_users[m.s_pk].push_back(id);
    members.emplace(id, std::move(m));
  }
  // A key used twice (by two clients, or as both keys of one) drops every client that used it.
  for (const auto& [key, users] : key_users) {
    if (users.size() < 2) continue;
    for (const std::string& id : users) {
      dropped[id] = "public key already used";
      members.erase(id);
    }
  }
  if (members.size() < 2) {
    return Status::FailedPrecondition("secagg on_advertised: " + std::to_string(members.size()) +
                                      " valid clients; at least 2 are needed");
  }

  // The graph: a Harary graph on a random ring order (each linked to the k/2 nearest on each side),
  // or the complete graph when it is at least as dense.
  std::vector<std::string> ring;
  for (const auto& [id, m] : members) ring.push_back(id);
  const size_t count = ring.size();
  const size_t k = static_cast<size_t>(params_.neighbours + (params_.neighbours % 2));
  if (count - 1 <= k) {
    for (auto& [id, m] : members) {
      for (const std::string& other : ring) {
        if (other != id) m.neighbours.insert(other);
      }
    }
  } else {
    rng_.shuffle(ring);
    for (size_t i = 0; i < count; ++i) {
      for (size_t d = 1; d <= k / 2; ++d) {
        members[ring[i]].neighbours.insert(ring[(i + d) % count]);
        members[ring[i]].neighbours.insert(ring[(i + count - d) % count]);
      }
    }
  }
  for (auto& [id, m] : members) {
    m.threshold = threshold_for(params_.reconstruction_threshold, m.neighbours.size());
    u1_.insert(id);
  }
  members_ = std::move(members);
  stage_ = 1;
  return dropped;
}

json ServerSecAgg::share_request(const std::string& client) const {
  auto it = members_.find(client);
  if (stage_ < 1 || it == members_.end()) return json::object();
  json list = json::array();
  for (const std::string& v : it->second.neighbours) {
    const Member& n = members_.at(v);
    list.push_back(json{{"id", v},
                        {"c_pk", to_hex(n.c_pk.data(), n.c_pk.size())},
                        {"s_pk", to_hex(n.s_pk.data(), n.s_pk.size())}});
  }
  return json{{"threshold", it->second.threshold}, {"neighbours", std::move(list)}};
}

Result<std::map<std::string, std::string>> ServerSecAgg::on_shared(
    const std::map<std::string, json>& replies) {
  if (stage_ != 1) return Status::FailedPrecondition("secagg on_shared: out of order");
  std::map<std::string, std::string> dropped;
  for (const auto& [id, reply] : replies) {
    auto member = members_.find(id);
    if (member == members_.end()) continue;  // not in U1: nothing to drop
    Member& m = member->second;
    const std::string where = "share reply of " + id;
    std::map<std::string, json> sent;
    const json* list = nullptr;
    Status st = get_array(reply, "shares", where, &list);
    if (st.ok() && list->size() != m.neighbours.size()) {
      st = Status::InvalidArgument(where + ".shares: " + std::to_string(list->size()) +
                                   " entries for " + std::to_string(m.neighbours.size()) +
                                   " neighbours");
    }
    for (size_t i = 0; st.ok() && i < list->size(); ++i) {
      const json& e = (*list)[i];
      const std::string name = where + ".shares[" + std::to_string(i) + "]";
      std::string to, sealed, commit_b, commit_s;
      st = get_string(e, "to", name, &to);
      if (st.ok()) st = get_hex(e, "sealed", name, 0, secagg_codec::kMaxBlobBytes, &sealed);
      if (st.ok()) st = get_hex(e, "commit_b", name, kCommitmentBytes, kCommitmentBytes, &commit_b);
      if (st.ok()) st = get_hex(e, "commit_s", name, kCommitmentBytes, kCommitmentBytes, &commit_s);
      if (st.ok() && sealed.size() <= secagg_codec::kNonceAndTagBytes) {
        st = Status::InvalidArgument(name + ".sealed: too short");
      }
      if (st.ok() && m.neighbours.count(to) == 0) {
        st = Status::InvalidArgument(name + ".to: " + to + " is not a neighbour");
      }
      if (st.ok() && sent.count(to) != 0) {
        st = Status::InvalidArgument(name + ".to: " + to + " listed twice");
      }
      if (st.ok()) {
        sent[to] =
            json{{"sealed", e["sealed"]}, {"commit_b", e["commit_b"]}, {"commit_s", e["commit_s"]}};
      }
    }
    if (!st.ok()) {
      dropped[id] = st.message();
      continue;
    }
    m.sent = std::move(sent);
    u2_.insert(id);
  }
  stage_ = 2;
  FEDTAIL_RETURN_IF_ERROR(check_dropouts(u2_, "on_shared"));
  return dropped;
}

json ServerSecAgg::receive_request(const std::string& client) const {
  if (stage_ < 2 || u2_.count(client) == 0) return json::object();
  json list = json::array();
  for (const std::string& v : members_.at(client).neighbours) {
    if (u2_.count(v) == 0) continue;
    const json& sent = members_.at(v).sent.at(client);
    list.push_back(json{{"from", v},
                        {"sealed", sent["sealed"]},
                        {"commit_b", sent["commit_b"]},
                        {"commit_s", sent["commit_s"]}});
  }
  return json{{"shares", std::move(list)}};
}

Result<std::map<std::string, std::string>> ServerSecAgg::on_received(
    const std::map<std::string, json>& replies) {
  if (stage_ != 2) return Status::FailedPrecondition("secagg on_received: out of order");
  std::map<std::string, std::string> excluded;
  for (const std::string& u : u2_) {
    auto reply = replies.find(u);
    if (reply == replies.end()) {
      excluded.emplace(u, "no answer to the receive request");
      continue;
    }
    const std::string where = "receive reply of " + u;
    // The senders whose shares u was sent: each must be either accepted or rejected.
    std::set<std::string> senders;
    for (const std::string& v : members_.at(u).neighbours) {
      if (u2_.count(v) != 0) senders.insert(v);
    }
    std::vector<std::string> accepted;
    Status st = get_id_list(reply->second, "accepted", where, &accepted);
    const json* rejected_list = nullptr;
    if (st.ok()) st = get_array(reply->second, "rejected", where, &rejected_list);
    std::map<std::string, std::string> rejected;
    for (size_t i = 0; st.ok() && i < rejected_list->size(); ++i) {
      const std::string name = where + ".rejected[" + std::to_string(i) + "]";
      std::string from, reason;
      st = get_string((*rejected_list)[i], "from", name, &from);
      if (st.ok()) st = get_string((*rejected_list)[i], "reason", name, &reason);
      if (st.ok() && senders.count(from) == 0) {
        st = Status::InvalidArgument(name + ".from: " + from + " sent it no share");
      }
      if (st.ok() && !rejected.emplace(from, reason).second) {
        st = Status::InvalidArgument(name + ".from: " + from + " listed twice");
      }
    }
    for (size_t i = 0; st.ok() && i < accepted.size(); ++i) {
      const std::string name = where + ".accepted[" + std::to_string(i) + "]";
      if (senders.count(accepted[i]) == 0) {
        st = Status::InvalidArgument(name + ": " + accepted[i] + " sent it no share");
      } else if (rejected.count(accepted[i]) != 0) {
        st = Status::InvalidArgument(name + ": " + accepted[i] + " also rejected");
      }
    }
    if (!st.ok()) {
      excluded.emplace(u, st.message());
      continue;
    }
    // A sender that u neither accepted nor rejected left u without its share: as good as rejected.
    for (const std::string& v : accepted) senders.erase(v);
    for (const std::string& v : senders) {
      auto r = rejected.find(v);
      const std::string reason = r == rejected.end() ? "not accepted" : r->second;
      excluded.emplace(v, "share rejected by " + u + ": " + reason);
    }
  }
  for (const std::string& u : u2_) {
    if (excluded.count(u) == 0) u3_.insert(u);
  }
  stage_ = 3;
  FEDTAIL_RETURN_IF_ERROR(check_dropouts(u3_, "on_received"));
  return excluded;
}

std::vector<std::string> ServerSecAgg::maskers() const {
  return std::vector<std::string>(u3_.begin(), u3_.end());
}

std::vector<std::string> ServerSecAgg::active_neighbours(const std::string& client) const {
  std::vector<std::string> out;
  auto it = members_.find(client);
  if (stage_ < 3 || it == members_.end()) return out;
  for (const std::string& v : it->second.neighbours) {
    if (u3_.count(v) != 0) out.push_back(v);
  }
  return out;
}

Status ServerSecAgg::on_masked(const std::set<std::string>& survivors) {
  if (stage_ != 3) return Status::FailedPrecondition("secagg on_masked: out of order");
  for (const std::string& u : survivors) {
    if (u3_.count(u) == 0) {
      return Status::InvalidArgument("secagg on_masked: " + u + " was not asked to mask");
    }
  }
  if (survivors.empty()) return Status::FailedPrecondition("secagg on_masked: no masked input");
  FEDTAIL_RETURN_IF_ERROR(check_dropouts(survivors, "on_masked"));
  u4_ = survivors;
  stage_ = 4;
  return Status::OK();
}

json ServerSecAgg::unmask_request(const std::string& client) const {
  if (stage_ < 4 || u4_.count(client) == 0) return json::object();
  json survivors = json::array();
  json dropped = json::array();
  for (const std::string& v : active_neighbours(client)) {
    (u4_.count(v) != 0 ? survivors : dropped).push_back(v);
  }
  return json{{"survivors", std::move(survivors)}, {"dropped", std::move(dropped)}};
}

Status ServerSecAgg::unmask(const std::map<std::string, json>& replies, uint32_t* sum, size_t n,
                            std::map<std::string, std::string>* bad_senders) {
  if (stage_ != 4) return Status::FailedPrecondition("secagg unmask: out of order");
  if (sum == nullptr && n != 0) return Status::InvalidArgument("secagg unmask: sum is null");
  std::map<std::string, std::string> bad;
  // Valid revealed shares: owner -> shares of its b (owner in U4) or its s_sk (owner in U3 \ U4).
  std::map<std::string, std::vector<Share>> shares;

  for (const auto& [holder, reply] : replies) {
    if (u4_.count(holder) == 0) continue;  // not asked
    const std::string where = "unmask reply of " + holder;
    const json request = unmask_request(holder);
    std::set<std::string> expected_b, expected_s;
    for (const json& v : request["survivors"]) expected_b.insert(v.get<std::string>());
    for (const json& v : request["dropped"]) expected_s.insert(v.get<std::string>());
    std::vector<Share> found;
    std::vector<std::string> owners;
    std::vector<std::string> problems;
    std::set<std::string> seen;
    for (const char* key : {"b_shares", "s_shares"}) {
      const bool is_b = key[0] == 'b';
      const json* list = nullptr;
      Status st = get_array(reply, key, where, &list);
      if (!st.ok()) {
        problems.push_back(st.message());
        continue;
      }
      for (size_t i = 0; i < list->size(); ++i) {
        const std::string name = where + "." + key + "[" + std::to_string(i) + "]";
        std::string of, bytes;
        st = get_string((*list)[i], "of", name, &of);
        if (st.ok())
          st = get_hex((*list)[i], "share", name, 0, secagg_codec::kMaxBlobBytes, &bytes);
        if (st.ok() && (is_b ? expected_b : expected_s).count(of) == 0) {
          st = Status::InvalidArgument(name + ".of: " + of + " was not asked for");
        }
        if (st.ok() && !seen.insert(of).second) {
          st = Status::InvalidArgument(name + ".of: " + of + " revealed twice");
        }
        if (st.ok()) {
          const json& sent = members_.at(of).sent.at(holder);
          const std::string& commitment =
              sent[is_b ? "commit_b" : "commit_s"].get_ref<const std::string&>();
          if (!constant_time_equal(share_commitment(of, holder, is_b ? 'b' : 's', bytes),
                                   commitment)) {
            st = Status::InvalidArgument(name + ": does not match its commitment");
          }
        }
        Result<Share> share = Status::InvalidArgument("unset");
        if (st.ok()) {
          share = secagg_codec::decode_key_share(bytes);
          if (!share.ok()) {
            st = share.status().with_context(name);
          } else if (share->x != share_x(members_.at(of).neighbours, holder)) {
            st = Status::InvalidArgument(name + ": wrong evaluation point");
          }
        }
        if (!st.ok()) {
          problems.push_back(st.message());
          continue;
        }
        shares[of].push_back(std::move(share).value());
      }
    }
    if (!problems.empty()) {
      std::string all = problems[0];
      for (size_t i = 1; i < problems.size(); ++i) all += "; " + problems[i];
      bad[holder] = all;
    }
  }
  if (bad_senders != nullptr) *bad_senders = bad;

  // Reconstruct and verify every secret before touching `sum` (no partial reveal).
  std::vector<std::pair<Key32, int>> to_remove;  // seed, sign it was added with
  for (const std::string& u : u4_) {
    const Member& m = members_.at(u);
    const std::vector<Share>& got = shares[u];
    if (static_cast<int>(got.size()) < m.threshold) {
      return Status::FailedPrecondition("secagg unmask: " + std::to_string(got.size()) +
                                        " valid shares of the self mask of " + u + ", " +
                                        std::to_string(m.threshold) + " needed");
    }
    Result<std::string> b = shamir_combine(got, m.threshold);
    if (!b.ok() || b->size() != kKeyBytes) {
      return Status::FailedPrecondition("secagg unmask: cannot reconstruct the self mask of " + u);
    }
    Key32 seed;
    std::memcpy(seed.data(), b->data(), kKeyBytes);
    to_remove.emplace_back(seed, +1);
  }
  for (const std::string& u : u3_) {
    if (u4_.count(u) != 0) continue;
    const Member& m = members_.at(u);
    std::vector<std::string> partners;  // survivors that masked with u
    for (const std::string& w : m.neighbours) {
      if (u4_.count(w) != 0) partners.push_back(w);
    }
    if (partners.empty()) continue;
    const std::vector<Share>& got = shares[u];
    if (static_cast<int>(got.size()) < m.threshold) {
      return Status::FailedPrecondition("secagg unmask: " + std::to_string(got.size()) +
                                        " valid shares of the mask key of dropped client " + u +
                                        ", " + std::to_string(m.threshold) + " needed");
    }
    Result<std::string> sk = shamir_combine(got, m.threshold);
    Key32 secret{};
    if (sk.ok() && sk->size() == kKeyBytes) std::memcpy(secret.data(), sk->data(), kKeyBytes);
    if (!sk.ok() || sk->size() != kKeyBytes || public_key_of(secret) != m.s_pk) {
      return Status::FailedPrecondition(
          "secagg unmask: the reconstructed mask key of dropped client " + u +
          " does not match its s_pk");
    }
    for (const std::string& w : partners) {
      // w added sign(w, u) * PRG(s_wu); s_wu = agreed_key(s_sk_u, s_pk_w) by symmetry.
      Result<Key32> seed = agreed_key(secret, members_.at(w).s_pk, secagg_codec::kMaskInfo);
      if (!seed.ok()) return seed.status().with_context("secagg unmask: pair " + w + "/" + u);
      to_remove.emplace_back(*seed, secagg_codec::sign_of(w, u));
    }
  }
  for (const auto& [seed, sign] : to_remove) apply_mask(seed, -sign, sum, n);
  stage_ = 5;
  return Status::OK();
}

const std::set<std::string>& ServerSecAgg::neighbours(const std::string& client) const {
  static const std::set<std::string>* const kEmpty = new std::set<std::string>();
  auto it = members_.find(client);
  return it == members_.end() ? *kEmpty : it->second.neighbours;
}

int ServerSecAgg::threshold(const std::string& client) const {
  auto it = members_.find(client);
  return it == members_.end() ? 0 : it->second.threshold;
}

}  // namespace fedtail::privacy
