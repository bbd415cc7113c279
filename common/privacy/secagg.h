// SecAgg+ (Bell et al., CCS 2020; after Bonawitz et al., CCS 2017): the coordinator learns the sum
// of the selected clients' masked vectors, modulo 2^32, and nothing about any one of them; clients
// that drop out mid-protocol are recovered from their neighbours' Shamir shares.
//
// This file holds the protocol's two state machines without any transport: ClientSecAgg (one per
// client and round) and ServerSecAgg (one per round). The coordinator's round engine carries their
// messages as JSON in task configs and result metrics (coordinator/secure_round.h), the client
// runtime keeps one ClientSecAgg per (client, round) in memory (never on disk).
//
// One round, with U1 ⊇ U2 ⊇ U3 ⊇ U4 the clients still in after each stage:
//   1. advertise  client → {c_pk, s_pk}: two fresh X25519 key pairs (c: encrypting shares, s:
//   masks)
//                 and a fresh 32-byte self-mask seed b.                                    U1
//   2. share      server → the client's neighbours in a random k-regular graph over U1 (a Harary
//                 graph on a random ring order drawn from the round's Rng: each node linked to the
//                 k/2 nearest on each side; everybody when |U1| - 1 <= k) with their public keys
//                 and the threshold t; client → for each neighbour v, AES-GCM(agreed c key,
//                 [Shamir share of b, Shamir share of s_sk]) plus a SHA-256 commitment to each
//                 share (the coordinator checks revealed shares against them).            U2
//   3. receive    server → each client the sealed shares addressed to it (from senders in U2);
//                 client → which senders' shares opened, named the right sender, recipient and
//                 round, and matched their commitments. A sender rejected by any recipient is
//                 excluded from the round (it sent malformed shares).                      U3
//   4. mask       (the fit task) server → each client its active neighbours (neighbours in U3) and
//                 its weight; client → y = x + PRG(b) + Σ_{v active} ±PRG(s_uv) mod 2^32, where
//                 s_uv = HKDF(X25519(s_sk_u, s_pk_v)) and the sign is + when u < v (by id), - else.
//                 The server adds each y into a running sum as it arrives.              U4
//   5. unmask     server → each survivor (in U4) the lists of its neighbours that survived
//                 (U4) and that dropped (U3 \ U4); client → its shares of b for the survivors and
//                 of s_sk for the dropped (never both for one client: it refuses a request that
//                 names a client in both lists, or one it holds no share of). The server checks
//                 each share against its commitment, reconstructs each survivor's b and each
//                 dropped client's s_sk (checked against its s_pk) from t valid shares, and removes
//                 PRG(b_u) for u in U4 and the dropped clients' pairwise masks from the sum.
// A round in which some needed secret has fewer than t valid shares fails (no partial reveal).
//
// Thread-compatible: one thread at a time per object.
#ifndef FEDTAIL_COMMON_PRIVACY_SECAGG_H_
#define FEDTAIL_COMMON_PRIVACY_SECAGG_H_

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/privacy/secagg_crypto.h"
#include "common/privacy/shamir.h"

namespace fedtail::privacy {

// The round's protocol parameters (config.secagg; coordinator side).
struct SecAggParams {
  int neighbours = 16;  // k: each client's neighbourhood size (even, >= 2)
  // t as a fraction of each client's neighbourhood (0, 1]: t = max(2, ceil(fraction * |N(u)|)),
  // at most |N(u)|.
  double reconstruction_threshold = 0.5;
  // A round stops (fails cleanly) when more than this fraction of the clients that advertised keys
  // are gone before unmasking: the guard of Bell et al. against a coordinator that claims
  // dropouts to learn individual inputs. In [0, 1).
  double max_dropout_fraction = 0.3;
};

// The stage names, as carried in messages ("stage": ...).
inline constexpr const char* kStageAdvertise = "advertise";
inline constexpr const char* kStageShare = "share";
inline constexpr const char* kStageReceive = "receive";
inline constexpr const char* kStageMask = "mask";
inline constexpr const char* kStageUnmask = "unmask";

// One client's side of one round. Messages are JSON objects; binary values are lower-case hex.
class ClientSecAgg {
 public:
  // `client_id` and `round` are bound into every share's associated data and plaintext.
  ClientSecAgg(std::string client_id, uint64_t round);

  // Stage 1: makes the keys and b; returns {"c_pk", "s_pk"}. Called once; a later call returns the
  // same public keys.
  nlohmann::json advertise();

  // Stage 2: `request` = {"threshold": t, "neighbours": [{"id", "c_pk", "s_pk"}, ...]} (sorted
  // by id, not containing this client). Returns {"shares": [{"to": id, "sealed": hex,
  // "commit_b": hex, "commit_s": hex}, ...]} in the same order. kInvalidArgument (naming the field)
  // on a malformed request: missing fields, unsorted or duplicate ids, an empty id or one holding
  // '|', this client listed, more than 255 neighbours, a key that is not 32 bytes of lower-case hex
  // or gives an all-zero X25519 output, t outside [1, |neighbours|]; kFailedPrecondition out of
  // order. On error nothing changes (the call may be retried).
  Result<nlohmann::json> share(const nlohmann::json& request);

  // Stage 3: `request` = {"shares": [{"from": id, "sealed", "commit_b", "commit_s"}, ...]}.
  // Opens each sealed share with the key agreed with the sender's c_pk (the sender must be one of
  // the stage-2 neighbours), checks its plaintext names (sender, this client, round) and its
  // commitments, and keeps the good ones. Returns {"accepted": [ids], "rejected": [{"from": id,
  // "reason": text}]}. kInvalidArgument on a malformed request (not per-share problems, which go
  // to "rejected"); kFailedPrecondition out of order.
  Result<nlohmann::json> receive(const nlohmann::json& request);

  // Stage 4: adds the masks to `words` (the quantised input, n words) in place: PRG(b) and, for
  // every id in `active` (each must be a neighbour whose share was accepted), ±PRG(s_uv).
  // kInvalidArgument for an id that is not such a neighbour, a repeated id, or null `words` with
  // n > 0; kFailedPrecondition out of order, or when `active` holds fewer than t ids (fewer holders
  // than t could never unmask this client's input, while a coordinator that shrinks the active set
  // would weaken the pairwise masks). On error `words` is unchanged.
  Status mask(const std::vector<std::string>& active, uint32_t* words, size_t n);

  // Stage 5: `request` = {"survivors": [ids], "dropped": [ids]}. Returns {"b_shares": [{"of": id,
  // "share": hex}], "s_shares": [{"of": id, "share": hex}]} (hex of encode_share()), in the
  // request's order. Both lists must be subsets of the active neighbours given to mask() (all of
  // them neighbours whose share was accepted), disjoint, without repeats: kInvalidArgument (naming
  // the id) otherwise, e.g. for an id in both lists or one outside the active set. Answers once:
  // kFailedPrecondition out of order or on a second call (a second answer could reveal both
  // secrets of one client).
  Result<nlohmann::json> unmask(const nlohmann::json& request);

 private:
  enum class Stage { kNew, kAdvertised, kShared, kReceived, kMasked, kDone };
  struct Neighbour {
    Key32 c_pk{};
    Key32 s_pk{};
    bool accepted = false;
    Share b_share;  // this client's share of the neighbour's b (when accepted)
    Share s_share;  // of the neighbour's s_sk
  };

  std::string id_;
  uint64_t round_;
  Stage stage_ = Stage::kNew;
  int threshold_ = 0;  // t from the share request
  KeyPair c_{};
  KeyPair s_{};
  Key32 b_{};
  std::map<std::string, Neighbour> neighbours_;
  std::set<std::string> active_;
};

// The server's side of one round.
class ServerSecAgg {
 public:
  // `rng` draws the neighbour graph (Rng::derive(seed, "secagg", {round})).
  ServerSecAgg(SecAggParams params, uint64_t round, Rng rng);

  // The query methods below (share_request, receive_request, active_neighbours, unmask_request)
  // return an empty object / list for a client that is not in the stage's set or before the stage.

  // Stage 1 answers: client id -> its advertise reply. Clients with malformed keys (not 32 bytes
  // of lower-case hex, or a low-order X25519 point), a public key already used (by another client
  // or as both of its own keys), or an id that is empty or holds '|' are dropped (listed in the
  // return value with the reason). Builds the graph over the others (U1). kInvalidArgument
  // (naming the field) on bad params (neighbours outside [2, 254], reconstruction_threshold
  // outside (0, 1], max_dropout_fraction outside [0, 1)); kFailedPrecondition when fewer than 2
  // clients remain, or out of order.
  Result<std::map<std::string, std::string>> on_advertised(
      const std::map<std::string, nlohmann::json>& replies);
  // The stage-2 request for `client` (in U1): {"threshold", "neighbours": [...]}.
  nlohmann::json share_request(const std::string& client) const;
  // Stage 2 answers. A reply that does not hold exactly one well-formed entry per neighbour drops
  // its client (returned with the reason). Clients of U1 without a reply are dropped silently;
  // replies from clients outside U1 are ignored. kFailedPrecondition out of order, or when more
  // than max_dropout_fraction of U1 is gone (the round cannot finish).
  Result<std::map<std::string, std::string>> on_shared(
      const std::map<std::string, nlohmann::json>& replies);
  // The stage-3 request for `client` (in U2): the sealed shares addressed to it by senders in U2.
  nlohmann::json receive_request(const std::string& client) const;
  // Stage 3 answers. Returns the excluded clients with the reason: senders rejected by a
  // recipient (a sender that a recipient neither accepted nor rejected counts as rejected), and
  // clients that did not answer or answered with a malformed reply (their rejections are then
  // ignored). U3 = U2 minus those. kFailedPrecondition out of order, or when more than
  // max_dropout_fraction of U1 is gone.
  Result<std::map<std::string, std::string>> on_received(
      const std::map<std::string, nlohmann::json>& replies);
  // The clients that get a mask (fit) task: U3, sorted.
  std::vector<std::string> maskers() const;
  // `client`'s active neighbours (its neighbours in U3), sorted: the "neighbours" of its mask task.
  std::vector<std::string> active_neighbours(const std::string& client) const;
  // Stage 4: the clients whose masked input was added to the sum (U4). kInvalidArgument for a
  // client outside U3; kFailedPrecondition when fewer than 1 client, when more than
  // max_dropout_fraction of U1 is gone ((|U1| - |U4|) / |U1| > fraction), or out of order.
  Status on_masked(const std::set<std::string>& survivors);
  // The stage-5 request for `client` (in U4): {"survivors": [...], "dropped": [...]} restricted to
  // its active neighbours.
  nlohmann::json unmask_request(const std::string& client) const;
  // Stage 5: checks the revealed shares against the commitments (a bad share is ignored and its
  // sender returned in *bad_senders with the reason; bad_senders may be null; replies from clients
  // outside U4 are ignored), reconstructs the secrets, and removes the masks from `sum` (n words,
  // the running sum of the masked inputs of U4) in place. A dropped client's s_sk is needed only
  // when it has a neighbour in U4. On error (kFailedPrecondition: a secret with fewer than t valid
  // shares, or a reconstructed s_sk that does not match its s_pk; kInvalidArgument: sum is null)
  // `sum` is left unchanged, and the call may be repeated with more replies.
  Status unmask(const std::map<std::string, nlohmann::json>& replies, uint32_t* sum, size_t n,
                std::map<std::string, std::string>* bad_senders);

  // For metrics and tests.
  const std::set<std::string>& advertised() const { return u1_; }
  const std::set<std::string>& shared() const { return u2_; }
  const std::set<std::string>& confirmed() const { return u3_; }
  const std::set<std::string>& survivors() const { return u4_; }
  // `client`'s neighbours in the graph (over U1).
  const std::set<std::string>& neighbours(const std::string& client) const;
  // Its threshold t.
  int threshold(const std::string& client) const;

 private:
  struct Member {
    Key32 c_pk{};
    Key32 s_pk{};
    std::set<std::string> neighbours;
    int threshold = 0;
    // Stage 2: what it sent to each neighbour.
    std::map<std::string, nlohmann::json> sent;  // to -> {"sealed", "commit_b", "commit_s"}
  };

  // kFailedPrecondition when more than max_dropout_fraction of U1 is missing from `remaining`.
  Status check_dropouts(const std::set<std::string>& remaining, const char* stage) const;

  SecAggParams params_;
  uint64_t round_;
  Rng rng_;
  int stage_ = 0;
  std::map<std::string, Member> members_;
  std::set<std::string> u1_, u2_, u3_, u4_;
};

// SHA-256 commitment to a share (domain-separated): what "commit_b"/"commit_s" hold, as hex.
std::string share_commitment(const std::string& owner, const std::string& holder, char kind,
                             const std::string& encoded_share);

}  // namespace fedtail::privacy

#endif  // FEDTAIL_COMMON_PRIVACY_SECAGG_H_
