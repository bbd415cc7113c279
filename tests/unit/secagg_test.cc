#include "common/privacy/secagg.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "common/base/rng.h"
#include "common/privacy/secagg_crypto.h"
#include "common/privacy/shamir.h"
#include "common/security/crypto.h"

namespace fedtail::privacy {
namespace {

using nlohmann::json;

std::string client_name(int i) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "c%02d", i);
  return buf;
}

// An in-process federation: N clients and one server, driven through the five stages.
struct Federation {
  Federation(int n, int k, size_t len, uint64_t seed = 1, double max_dropout = 0.3)
      : len(len),
        server(make_params(k, max_dropout), kRound, Rng::derive(seed, "secagg", {kRound})) {
    Rng inputs_rng(seed + 1000);
    for (int i = 0; i < n; ++i) {
      const std::string id = client_name(i);
      ids.push_back(id);
      clients[id] = std::make_unique<ClientSecAgg>(id, kRound);
      std::vector<uint32_t> x(len);
      for (uint32_t& w : x) w = static_cast<uint32_t>(inputs_rng.next_u64());
      inputs[id] = std::move(x);
    }
  }
  static SecAggParams make_params(int k, double max_dropout) {
    SecAggParams p;
    p.neighbours = k;
    p.reconstruction_threshold = 0.5;
    p.max_dropout_fraction = max_dropout;
    return p;
  }
  // The plain sum of `who`'s inputs modulo 2^32.
  std::vector<uint32_t> plain_sum(const std::set<std::string>& who) const {
    std::vector<uint32_t> sum(len, 0);
    for (const std::string& id : who) {
      for (size_t i = 0; i < len; ++i) sum[i] += inputs.at(id)[i];
    }
    return sum;
  }

  static constexpr uint64_t kRound = 7;
  size_t len;
  std::vector<std::string> ids;
  std::map<std::string, std::unique_ptr<ClientSecAgg>> clients;
  std::map<std::string, std::vector<uint32_t>> inputs;
  ServerSecAgg server;
};

// Who drops where, and hooks that tamper with messages in flight.
struct Faults {
  std::set<std::string> no_advertise;  // never answers stage 1
  std::set<std::string> no_share;      // advertised, then gone
  std::set<std::string> no_receive;    // shared, then gone
  std::set<std::string> no_mask;       // confirmed its shares, then gone before masking
  std::set<std::string> mask_lost;     // masked, but its input never reached the server
  std::set<std::string> no_unmask;     // survivor that does not answer stage 5
  std::function<void(const std::string&, json*)> share_reply;
  std::function<void(const std::string&, json*)> receive_request;
  std::function<void(const std::string&, json*)> unmask_reply;
};

struct Outcome {
  Status status;  // the first server-side failure, or OK
  std::map<std::string, std::string> dropped_advertise, dropped_share, excluded_receive, bad_unmask;
  std::map<std::string, std::vector<uint32_t>> masked;  // each masker's y
  std::vector<uint32_t> masked_sum;                     // the sum before unmasking
  std::vector<uint32_t> sum;                            // after unmask (== masked_sum on error)
};

Outcome run_round(Federation& f, const Faults& faults = {}) {
  Outcome out;
  ServerSecAgg& server = f.server;
  std::map<std::string, json> replies;
  for (const std::string& id : f.ids) {
    if (faults.no_advertise.count(id) == 0) replies[id] = f.clients[id]->advertise();
  }
  auto advertised = server.on_advertised(replies);
  if (!advertised.ok()) {
    out.status = advertised.status();
    return out;
  }
  out.dropped_advertise = *advertised;

  replies.clear();
  for (const std::string& id : server.advertised()) {
    if (faults.no_share.count(id) != 0) continue;
    Result<json> reply = f.clients[id]->share(server.share_request(id));
    EXPECT_TRUE(reply.ok()) << id << ": " << reply.status().to_string();
    if (!reply.ok()) continue;
    if (faults.share_reply) faults.share_reply(id, &*reply);
    replies[id] = *reply;
  }
  auto shared = server.on_shared(replies);
  if (!shared.ok()) {
    out.status = shared.status();
    return out;
  }
  out.dropped_share = *shared;

  replies.clear();
  for (const std::string& id : server.shared()) {
    if (faults.no_receive.count(id) != 0) continue;
    json request = server.receive_request(id);
    if (faults.receive_request) faults.receive_request(id, &request);
    Result<json> reply = f.clients[id]->receive(request);
    EXPECT_TRUE(reply.ok()) << id << ": " << reply.status().to_string();
    if (reply.ok()) replies[id] = *reply;
  }
  auto received = server.on_received(replies);
  if (!received.ok()) {
    out.status = received.status();
    return out;
  }
  out.excluded_receive = *received;

  std::set<std::string> survivors;
  out.masked_sum.assign(f.len, 0);
  for (const std::string& id : server.maskers()) {
    if (faults.no_mask.count(id) != 0) continue;
    std::vector<uint32_t> y = f.inputs[id];
    Status st = f.clients[id]->mask(server.active_neighbours(id), y.data(), y.size());
    EXPECT_TRUE(st.ok()) << id << ": " << st.to_string();
    if (!st.ok()) continue;
    out.masked[id] = y;
    if (faults.mask_lost.count(id) != 0) continue;
    for (size_t i = 0; i < f.len; ++i) out.masked_sum[i] += y[i];
    survivors.insert(id);
  }
  out.sum = out.masked_sum;
  out.status = server.on_masked(survivors);
  if (!out.status.ok()) return out;

  replies.clear();
  for (const std::string& id : server.survivors()) {
    if (faults.no_unmask.count(id) != 0) continue;
    Result<json> reply = f.clients[id]->unmask(server.unmask_request(id));
    EXPECT_TRUE(reply.ok()) << id << ": " << reply.status().to_string();
    if (!reply.ok()) continue;
    if (faults.unmask_reply) faults.unmask_reply(id, &*reply);
    replies[id] = *reply;
  }
  out.status = server.unmask(replies, out.sum.data(), out.sum.size(), &out.bad_unmask);
  return out;
}

// Runs a round and checks that it succeeds with the exact sum of U4's inputs.
Outcome expect_exact(Federation& f, const Faults& faults = {}) {
  Outcome out = run_round(f, faults);
  EXPECT_TRUE(out.status.ok()) << out.status.to_string();
  EXPECT_FALSE(f.server.survivors().empty());
  EXPECT_EQ(out.sum, f.plain_sum(f.server.survivors()));
  return out;
}

std::set<std::string> all_of(const Federation& f) {
  return std::set<std::string>(f.ids.begin(), f.ids.end());
}

// ---------------------------------------------------------------------------------------------

TEST(SecAggCommitmentTest, MatchesHandComputedSha256) {
  // Python: hashlib.sha256(b"fedtail-secagg-commit|alice|bob|b|\x01\x02\x03").hexdigest()
  EXPECT_EQ(share_commitment("alice", "bob", 'b', std::string("\x01\x02\x03", 3)),
            "12e7aa2f98521d80f79f1167a3a9c8f530022d0f7ccea5293d203b41a08be56e");
  // Python: hashlib.sha256(b"fedtail-secagg-commit|alice|bob|s|").hexdigest()
  EXPECT_EQ(share_commitment("alice", "bob", 's', ""),
            "7db54ea1726dc5bcd0596fda5e0168760b15555c36d81565ba4232a624d6a6a2");
}

TEST(SecAggTest, SumIsExactWithoutDropouts) {
  for (auto [n, k] : {std::pair<int, int>{12, 4}, {30, 8}, {5, 8}, {2, 4}}) {
    SCOPED_TRACE("n=" + std::to_string(n) + " k=" + std::to_string(k));
    Federation f(n, k, /*len=*/1000);
    Outcome out = expect_exact(f);
    EXPECT_EQ(f.server.survivors(), all_of(f));
    EXPECT_TRUE(out.bad_unmask.empty());
    // The masks do hide the inputs: no masked vector equals its input.
    for (const auto& [id, y] : out.masked) EXPECT_NE(y, f.inputs[id]) << id;
  }
}

TEST(SecAggTest, SumIsExactWithDropoutsAtEachStage) {
  const std::vector<std::pair<const char*, std::function<void(Faults*)>>> cases = {
      {"after advertise",
       [](Faults* x) {
         x->no_share = {"c03", "c17"};
       }},
      {"after share",
       [](Faults* x) {
         x->no_receive = {"c03", "c17"};
       }},
      {"after receive",
       [](Faults* x) {
         x->no_mask = {"c03", "c17"};
       }},
      {"after mask",
       [](Faults* x) {
         x->mask_lost = {"c03", "c17"};
       }},
      {"during unmask",
       [](Faults* x) {
         x->no_unmask = {"c03", "c17"};
       }},
      {"before advertise",
       [](Faults* x) {
         x->no_advertise = {"c03", "c17"};
       }},
  };
  for (const auto& [name, set_faults] : cases) {
    SCOPED_TRACE(name);
    Federation f(/*n=*/30, /*k=*/8, /*len=*/1000);
    Faults faults;
    set_faults(&faults);
    expect_exact(f, faults);
    const std::set<std::string> gone = {"c03", "c17"};
    for (const std::string& id : gone) {
      // Only a non-answer at unmask keeps a client's input in the sum.
      EXPECT_EQ(f.server.survivors().count(id), faults.no_unmask.empty() ? 0u : 1u) << id;
    }
    EXPECT_EQ(f.server.survivors().size(), faults.no_unmask.empty() ? 28u : 30u);
  }
}

TEST(SecAggTest, SumIsExactWithDropoutsAtEveryStageInOneRound) {
  Federation f(/*n=*/30, /*k=*/8, /*len=*/1000);
  Faults faults;
  faults.no_share = {"c01"};
  faults.no_receive = {"c08"};
  faults.no_mask = {"c14"};
  faults.mask_lost = {"c21", "c27"};
  faults.no_unmask = {"c05", "c11"};
  expect_exact(f, faults);
  EXPECT_EQ(f.server.advertised().size(), 30u);
  EXPECT_EQ(f.server.shared().size(), 29u);
  EXPECT_EQ(f.server.confirmed().size(), 28u);
  EXPECT_EQ(f.server.survivors().size(), 25u);  // 5 of 30 gone: 0.167 <= 0.3
}

TEST(SecAggTest, TooManyDropoutsFailOnMasked) {
  // 4 of 12 gone = 0.333 > 0.3.
  Federation f(/*n=*/12, /*k=*/4, /*len=*/100);
  Faults faults;
  faults.mask_lost = {"c00", "c01", "c02", "c03"};
  Outcome out = run_round(f, faults);
  EXPECT_EQ(out.status.code(), StatusCode::kFailedPrecondition) << out.status.to_string();
  EXPECT_TRUE(f.server.survivors().empty());

  // 3 of 12 = 0.25 is allowed.
  Federation g(/*n=*/12, /*k=*/4, /*len=*/100);
  faults.mask_lost = {"c00", "c01", "c02"};
  expect_exact(g, faults);

  // Dropping too many earlier already stops the round at that stage.
  Federation h(/*n=*/12, /*k=*/4, /*len=*/100);
  Faults early;
  early.no_share = {"c00", "c01", "c02", "c03"};
  out = run_round(h, early);
  EXPECT_EQ(out.status.code(), StatusCode::kFailedPrecondition) << out.status.to_string();
}

TEST(SecAggTest, FewerThanThresholdSharesFailsAndLeavesSumMasked) {
  // n = 12, k = 4: every client has 4 neighbours and t = max(2, ceil(0.5 * 4)) = 2.
  Federation probe(/*n=*/12, /*k=*/4, /*len=*/200);
  run_round(probe);
  const std::set<std::string> nbrs = probe.server.neighbours("c00");
  ASSERT_EQ(nbrs.size(), 4u);
  EXPECT_EQ(probe.server.threshold("c00"), 2);
  std::vector<std::string> holders(nbrs.begin(), nbrs.end());

  // Survivor c00's b: 3 of its 4 holders stay silent, 1 share < t = 2. (Same seed: same graph.)
  Federation f(/*n=*/12, /*k=*/4, /*len=*/200);
  Faults faults;
  faults.no_unmask = {holders[0], holders[1], holders[2]};
  Outcome out = run_round(f, faults);
  EXPECT_EQ(out.status.code(), StatusCode::kFailedPrecondition) << out.status.to_string();
  EXPECT_NE(out.status.message().find("c00"), std::string::npos) << out.status.message();
  EXPECT_EQ(out.sum, out.masked_sum);  // unchanged: no partial reveal

  // Dropped c00's s_sk: c00 masked but its input was lost; 3 of its 4 holders answer without
  // their s-shares (so every survivor's b is still recoverable: only c00's s_sk lacks shares).
  Federation g(/*n=*/12, /*k=*/4, /*len=*/200);
  Faults lost;
  lost.mask_lost = {"c00"};
  const std::set<std::string> silent = {holders[0], holders[1], holders[2]};
  lost.unmask_reply = [&silent](const std::string& id, json* reply) {
    if (silent.count(id) != 0) (*reply)["s_shares"] = json::array();
  };
  out = run_round(g, lost);
  EXPECT_EQ(out.status.code(), StatusCode::kFailedPrecondition) << out.status.to_string();
  EXPECT_NE(out.status.message().find("dropped client c00"), std::string::npos)
      << out.status.message();
  EXPECT_EQ(out.sum, out.masked_sum);
  // With 2 of the 4 holders' s-shares (t = 2) the same round succeeds.
  Federation h(/*n=*/12, /*k=*/4, /*len=*/200);
  const std::set<std::string> two_silent = {holders[0], holders[1]};
  lost.unmask_reply = [&two_silent](const std::string& id, json* reply) {
    if (two_silent.count(id) != 0) (*reply)["s_shares"] = json::array();
  };
  expect_exact(h, lost);
}

// Flips the last hex digit of a string field.
void flip_hex(json* field) {
  std::string s = field->get<std::string>();
  s.back() = s.back() == '0' ? '1' : '0';
  *field = s;
}

TEST(SecAggTest, SenderOfCorruptedSealedShareIsExcludedAtStage3) {
  Federation f(/*n=*/12, /*k=*/4, /*len=*/300);
  Faults faults;
  faults.share_reply = [](const std::string& id, json* reply) {
    if (id == "c05") flip_hex(&(*reply)["shares"][1]["sealed"]);
  };
  Outcome out = expect_exact(f, faults);
  ASSERT_EQ(out.excluded_receive.count("c05"), 1u);
  EXPECT_NE(out.excluded_receive["c05"].find("not authentic"), std::string::npos)
      << out.excluded_receive["c05"];
  EXPECT_EQ(out.excluded_receive.size(), 1u);
  EXPECT_EQ(f.server.confirmed().count("c05"), 0u);
  EXPECT_EQ(f.server.survivors().size(), 11u);
}

TEST(SecAggTest, SenderOfWrongCommitmentIsExcludedAtStage3) {
  Federation f(/*n=*/12, /*k=*/4, /*len=*/300);
  Faults faults;
  faults.share_reply = [](const std::string& id, json* reply) {
    // Well-formed (32 bytes of hex) but committing to other bytes.
    if (id == "c09") (*reply)["shares"][0]["commit_s"] = share_commitment("c09", "x", 's', "y");
  };
  Outcome out = expect_exact(f, faults);
  ASSERT_EQ(out.excluded_receive.count("c09"), 1u);
  EXPECT_NE(out.excluded_receive["c09"].find("commitment"), std::string::npos);
  EXPECT_EQ(f.server.survivors().size(), 11u);
}

TEST(SecAggTest, SharesSwappedBetweenNeighboursAreRejectedAtStage3) {
  // The sealed share meant for one neighbour is delivered to another: it does not open there.
  Federation f(/*n=*/12, /*k=*/4, /*len=*/300);
  Faults faults;
  faults.share_reply = [](const std::string& id, json* reply) {
    if (id != "c02") return;
    json& shares = (*reply)["shares"];
    std::swap(shares[0]["sealed"], shares[1]["sealed"]);
    std::swap(shares[0]["commit_b"], shares[1]["commit_b"]);
    std::swap(shares[0]["commit_s"], shares[1]["commit_s"]);
  };
  Outcome out = expect_exact(f, faults);
  EXPECT_EQ(out.excluded_receive.count("c02"), 1u);
  EXPECT_EQ(f.server.survivors().size(), 11u);
}

TEST(SecAggTest, SharesAddressedToTheWrongNeighbourSetAreDroppedAtStage2) {
  Federation f(/*n=*/12, /*k=*/4, /*len=*/300);
  Faults faults;
  faults.share_reply = [&f](const std::string& id, json* reply) {
    json& shares = (*reply)["shares"];
    if (id == "c04") {
      // Addressed to a client that is not its neighbour.
      for (const std::string& other : f.ids) {
        if (other != id && f.server.neighbours(id).count(other) == 0) {
          shares[0]["to"] = other;
          break;
        }
      }
    } else if (id == "c07") {
      shares.erase(shares.size() - 1);  // one neighbour left out
    } else if (id == "c10") {
      shares[1]["to"] = shares[0]["to"];  // one neighbour twice
    }
  };
  Outcome out = expect_exact(f, faults);
  EXPECT_EQ(out.dropped_share.size(), 3u);
  EXPECT_NE(out.dropped_share["c04"].find("is not a neighbour"), std::string::npos)
      << out.dropped_share["c04"];
  EXPECT_NE(out.dropped_share["c07"].find("entries for"), std::string::npos);
  EXPECT_NE(out.dropped_share["c10"].find("listed twice"), std::string::npos);
  EXPECT_EQ(f.server.survivors().size(), 9u);  // 3 of 12 gone = 0.25
}

TEST(SecAggTest, ForwardedShareFromANonNeighbourIsRejectedByTheClient) {
  Federation f(/*n=*/12, /*k=*/4, /*len=*/100);
  Faults faults;
  faults.receive_request = [](const std::string& id, json* request) {
    if (id != "c06") return;
    json extra = (*request)["shares"][0];
    extra["from"] = "nobody";
    (*request)["shares"].push_back(extra);
  };
  Outcome out = run_round(f, faults);
  // c06 rejects "nobody" (not a neighbour); the server refuses the rejection of a non-sender and
  // so excludes c06 itself; the rest sums exactly.
  EXPECT_TRUE(out.status.ok()) << out.status.to_string();
  EXPECT_EQ(out.excluded_receive.count("c06"), 1u);
  EXPECT_EQ(out.sum, f.plain_sum(f.server.survivors()));
}

TEST(SecAggTest, RevealedShareNotMatchingItsCommitmentIsIgnoredAndReported) {
  // k = 8: each secret has up to 8 holders and t = 4, so one bad share leaves enough.
  Federation f(/*n=*/30, /*k=*/8, /*len=*/500);
  Faults faults;
  faults.mask_lost = {"c12"};  // so that some holders reveal s_sk shares too
  faults.unmask_reply = [](const std::string& id, json* reply) {
    if (id == "c00") flip_hex(&(*reply)["b_shares"][0]["share"]);
    if (id == "c08") (*reply)["b_shares"][0]["share"] = "zz";    // not hex
    if (id == "c16") (*reply)["b_shares"][0]["of"] = "c16";      // not asked for
    if (id == "c24") (*reply)["b_shares"] = 5;                   // wrong type
    for (json& s : (*reply)["s_shares"]) flip_hex(&s["share"]);  // every s-share of c12 is bad...
  };
  Outcome out = run_round(f, faults);
  // ...so c12's s_sk cannot be rebuilt: the round fails cleanly.
  EXPECT_EQ(out.status.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(out.sum, out.masked_sum);

  Federation g(/*n=*/30, /*k=*/8, /*len=*/500);
  faults.unmask_reply = [](const std::string& id, json* reply) {
    if (id == "c00") flip_hex(&(*reply)["b_shares"][0]["share"]);
    if (id == "c08") (*reply)["b_shares"][0]["share"] = "zz";
    if (id == "c16") (*reply)["b_shares"][0]["of"] = "c16";
    if (id == "c24") (*reply)["b_shares"] = 5;
    if (id == "c04" && !(*reply)["s_shares"].empty()) flip_hex(&(*reply)["s_shares"][0]["share"]);
  };
  out = expect_exact(g, faults);
  for (const char* id : {"c00", "c08", "c16", "c24"}) {
    EXPECT_EQ(out.bad_unmask.count(id), 1u) << id;
  }
  EXPECT_NE(out.bad_unmask["c00"].find("does not match its commitment"), std::string::npos)
      << out.bad_unmask["c00"];
  EXPECT_NE(out.bad_unmask["c08"].find("not lower-case hex"), std::string::npos);
  EXPECT_NE(out.bad_unmask["c16"].find("was not asked for"), std::string::npos);
  EXPECT_NE(out.bad_unmask["c24"].find("must be an array"), std::string::npos);
}

json unmask_req(const std::vector<std::string>& survivors,
                const std::vector<std::string>& dropped) {
  return json::object({{"survivors", survivors}, {"dropped", dropped}});
}

TEST(SecAggClientTest, RefusesUnmaskRequestsThatCouldRevealBothSecrets) {
  Federation f(/*n=*/6, /*k=*/8, /*len=*/10);  // complete graph: each has 5 neighbours
  std::map<std::string, json> replies;
  for (const std::string& id : f.ids) replies[id] = f.clients[id]->advertise();
  ASSERT_TRUE(f.server.on_advertised(replies).ok());
  replies.clear();
  for (const std::string& id : f.ids)
    replies[id] = *f.clients[id]->share(f.server.share_request(id));
  ASSERT_TRUE(f.server.on_shared(replies).ok());
  replies.clear();
  for (const std::string& id : f.ids) {
    replies[id] = *f.clients[id]->receive(f.server.receive_request(id));
  }
  ASSERT_TRUE(f.server.on_received(replies).ok());
  ClientSecAgg& c = *f.clients["c00"];
  std::vector<uint32_t> y(10, 0);
  // An active set naming a non-neighbour, itself or a repeat is refused; then the real one.
  EXPECT_EQ(c.mask({"c09"}, y.data(), y.size()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.mask({"c00"}, y.data(), y.size()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.mask({"c01", "c01"}, y.data(), y.size()).code(), StatusCode::kInvalidArgument);
  // t = max(2, ceil(0.5 * 5)) = 3: two active neighbours could never unmask it.
  EXPECT_EQ(c.mask({"c01", "c02"}, y.data(), y.size()).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(y, std::vector<uint32_t>(10, 0));  // untouched by the refusals
  ASSERT_TRUE(c.mask({"c01", "c02", "c03", "c04"}, y.data(), y.size()).ok());  // c05 not active
  EXPECT_EQ(c.mask({"c01"}, y.data(), y.size()).code(), StatusCode::kFailedPrecondition);

  const std::vector<json> refused = {
      unmask_req({"c01", "c02"}, {"c02"}),  // c02 in both lists
      unmask_req({"c01"}, {"c05"}),         // c05 was not active
      unmask_req({"c05"}, {}),              // nor as a survivor
      unmask_req({"c09"}, {}),              // not a neighbour
      unmask_req({"c00"}, {}),              // itself
      unmask_req({"c01", "c01"}, {}),       // a repeat
      json::object({{"survivors", json::array({"c01"})}}),
      json::object({{"survivors", "c01"}, {"dropped", json::array()}}),
      json::object({{"survivors", json::array({1})}, {"dropped", json::array()}}),
      json::array(),
      json(),
  };
  for (const json& request : refused) {
    Result<json> r = c.unmask(request);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << request.dump();
  }
  Result<json> ok = c.unmask(unmask_req({"c01", "c03"}, {"c02"}));
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  EXPECT_EQ((*ok)["b_shares"].size(), 2u);
  EXPECT_EQ((*ok)["b_shares"][0]["of"], "c01");
  EXPECT_EQ((*ok)["s_shares"].size(), 1u);
  EXPECT_EQ((*ok)["s_shares"][0]["of"], "c02");
  // It answers once: a second request could ask for c02's b.
  EXPECT_EQ(c.unmask(unmask_req({"c02"}, {})).status().code(), StatusCode::kFailedPrecondition);
}

TEST(SecAggClientTest, ShareRejectsMalformedRequestsNamingTheField) {
  ClientSecAgg peer("p", 3);
  const json pk = peer.advertise();
  const json good_nbr = {{"id", "p"}, {"c_pk", pk["c_pk"]}, {"s_pk", pk["s_pk"]}};
  const json one = json::array({good_nbr});
  auto share_req = [](const json& t, const json& neighbours) {
    return json::object({{"threshold", t}, {"neighbours", neighbours}});
  };
  auto with = [&](const std::string& key, const json& value) {
    json n = good_nbr;
    n[key] = value;
    return share_req(1, json::array({n}));
  };
  const std::string zero_key(64, '0');  // the all-zero point: X25519 gives all zeros
  const std::vector<std::pair<json, std::string>> cases = {
      {json(), "share request"},
      {json::array(), "share request"},
      {json::object({{"neighbours", one}}), "threshold"},
      {share_req("1", one), "threshold"},
      {share_req(0, one), "threshold"},
      {share_req(-1, one), "threshold"},
      {share_req(2, one), "threshold"},
      {share_req(1.5, one), "threshold"},
      {share_req(1, json::array()), "neighbours"},
      {share_req(1, "p"), "neighbours"},
      {share_req(1, json::array({good_nbr, good_nbr})), "neighbours[1].id"},
      {share_req(1, json::array({5})), "neighbours[0]"},
      {with("id", 5), "neighbours[0].id"},
      {with("id", "me"), "neighbours[0].id"},
      {with("id", "a|b"), "neighbours[0].id"},
      {with("id", ""), "neighbours[0].id"},
      {with("c_pk", "00"), "neighbours[0].c_pk"},
      {with("c_pk", zero_key), "neighbours[0].c_pk"},
      {with("s_pk", zero_key), "neighbours[0].s_pk"},
      {with("s_pk", nullptr), "neighbours[0].s_pk"},
      {with("s_pk", std::string(64, 'A')), "neighbours[0].s_pk"},  // upper case
      {with("s_pk", std::string(64, 'g')), "neighbours[0].s_pk"},
  };
  ClientSecAgg me("me", 3);
  EXPECT_EQ(me.share(share_req(1, one)).status().code(),
            StatusCode::kFailedPrecondition);  // before advertise
  me.advertise();
  for (const auto& [request, field] : cases) {
    Result<json> r = me.share(request);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << request.dump();
    EXPECT_NE(r.status().message().find(field), std::string::npos)
        << request.dump() << " -> " << r.status().message();
  }
  // Nothing changed: the good request still works, once.
  Result<json> r = me.share(share_req(1, one));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  ASSERT_EQ((*r)["shares"].size(), 1u);
  EXPECT_EQ((*r)["shares"][0]["to"], "p");
  EXPECT_EQ(me.share(share_req(1, one)).status().code(), StatusCode::kFailedPrecondition);

  // receive(): malformed requests are refused; per-share problems go to "rejected".
  auto entry = [](const json& from, const json& sealed) {
    return json::object({{"from", from}, {"sealed", sealed}, {"commit_b", ""}, {"commit_s", ""}});
  };
  const std::vector<json> bad_receive = {
      json(),
      json::object({{"shares", 1}}),
      json::object({{"shares", json::array({json::object({{"from", "p"}})})}}),
      json::object({{"shares", json::array({entry(1, "")})}}),
      json::object({{"shares", json::array({entry("p", 7)})}}),
  };
  for (const json& request : bad_receive) {
    EXPECT_EQ(me.receive(request).status().code(), StatusCode::kInvalidArgument) << request.dump();
  }
  Result<json> got =
      me.receive(json::object({{"shares", json::array({entry("p", "zz"), entry("q", "00")})}}));
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  EXPECT_TRUE((*got)["accepted"].empty());
  ASSERT_EQ((*got)["rejected"].size(), 2u);
  EXPECT_EQ((*got)["rejected"][0]["from"], "p");
  EXPECT_EQ((*got)["rejected"][1]["from"], "q");
  EXPECT_EQ((*got)["rejected"][1]["reason"], "not a neighbour");
}

TEST(SecAggServerTest, DropsMalformedAdvertisementsAndSurvivesGarbage) {
  ServerSecAgg server(SecAggParams{}, /*round=*/1, Rng(5));
  ClientSecAgg a("a", 1), b("b", 1), c("c", 1), d("d", 1), j("j", 1);
  const json ka = a.advertise(), kb = b.advertise(), kc = c.advertise();
  std::map<std::string, json> replies = {
      {"a", ka},
      {"b", kb},
      {"c", kc},
      {"d", {{"c_pk", kc["c_pk"]}, {"s_pk", d.advertise()["s_pk"]}}},  // reuses c's key
      {"e", json::array()},
      {"f", {{"c_pk", 5}, {"s_pk", ka["s_pk"]}}},
      {"g", {{"c_pk", std::string(64, '0')}, {"s_pk", kb["s_pk"]}}},  // low order (and a reuse)
      {"h|i", ka},
      {"j", {{"c_pk", j.advertise()["s_pk"]}, {"s_pk", j.advertise()["s_pk"]}}},
  };
  auto dropped = server.on_advertised(replies);
  ASSERT_TRUE(dropped.ok()) << dropped.status().to_string();
  // c and d share a key; j uses one key twice; e, f, g, "h|i" are malformed (so their copies of
  // a's and b's keys never count as reuse).
  for (const char* id : {"c", "d", "e", "f", "g", "h|i", "j"}) {
    EXPECT_EQ(dropped->count(id), 1u) << id;
    EXPECT_EQ(server.advertised().count(id), 0u) << id;
  }
  EXPECT_EQ(server.advertised(), (std::set<std::string>{"a", "b"}));
  EXPECT_EQ(server.share_request("zz"), json::object());
  EXPECT_TRUE(server.neighbours("zz").empty());
  EXPECT_EQ(server.threshold("zz"), 0);
  // Only 2 clients, complete graph, |N| = 1: t = 1.
  EXPECT_EQ(server.threshold("a"), 1);
  EXPECT_EQ(server.on_advertised(replies).status().code(), StatusCode::kFailedPrecondition);

  // Garbage at every later entry point: dropped with a reason, never a crash or an exception.
  std::map<std::string, json> garbage = {
      {"a", json()}, {"b", {{"shares", json::array({1, 2})}}}, {"q", 1}};
  auto shared = server.on_shared(garbage);
  EXPECT_FALSE(shared.ok());  // everyone gone: more than max_dropout_fraction
  ServerSecAgg bad_params(SecAggParams{/*neighbours=*/1, 0.5, 0.3}, 1, Rng(5));
  EXPECT_EQ(bad_params.on_advertised({{"a", ka}, {"b", kb}}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(SecAggServerTest, GraphIsKRegularSymmetricAndDeterministic) {
  auto build = [](int n, int k, uint64_t seed, double fraction = 0.5) {
    SecAggParams p;
    p.neighbours = k;
    p.reconstruction_threshold = fraction;
    auto server = std::make_unique<ServerSecAgg>(p, /*round=*/3, Rng(seed));
    std::map<std::string, json> replies;
    for (int i = 0; i < n; ++i) {
      // Distinct valid public keys (the graph does not depend on them).
      replies[client_name(i)] = {{"c_pk", to_hex(public_key_of(random_key()).data(), kKeyBytes)},
                                 {"s_pk", to_hex(public_key_of(random_key()).data(), kKeyBytes)}};
    }
    EXPECT_TRUE(server->on_advertised(replies).ok());
    return server;
  };
  auto graph = [](const ServerSecAgg& s) {
    std::map<std::string, std::set<std::string>> g;
    for (const std::string& id : s.advertised()) g[id] = s.neighbours(id);
    return g;
  };
  for (auto [n, k, expected_degree] :
       {std::array<int, 3>{30, 8, 8}, {12, 4, 4}, {12, 3, 4}, {9, 8, 8}, {20, 2, 2}}) {
    SCOPED_TRACE("n=" + std::to_string(n) + " k=" + std::to_string(k));
    auto s1 = build(n, k, /*seed=*/42);
    auto s2 = build(n, k, /*seed=*/42);
    auto s3 = build(n, k, /*seed=*/43);
    const auto g = graph(*s1);
    EXPECT_EQ(g, graph(*s2));  // same Rng, same graph (keys differ)
    if (n - 1 > k + 1) {
      EXPECT_NE(g, graph(*s3));  // another seed, another ring order
    }
    for (const auto& [id, nbrs] : g) {
      EXPECT_EQ(static_cast<int>(nbrs.size()), expected_degree) << id;  // k-regular (odd k + 1)
      EXPECT_EQ(nbrs.count(id), 0u);
      for (const std::string& v : nbrs) EXPECT_EQ(g.at(v).count(id), 1u) << id << "-" << v;
      // t = max(2, ceil(0.5 * |N|)).
      EXPECT_EQ(s1->threshold(id), std::max(2, (expected_degree + 1) / 2));
    }
  }
  // Complete graph when n - 1 <= k.
  auto complete = build(/*n=*/5, /*k=*/4, /*seed=*/1);
  for (const std::string& id : complete->advertised()) {
    EXPECT_EQ(complete->neighbours(id).size(), 4u);
  }
  // Thresholds: ceil(0.28 * 25) = 7 (0.28 * 25 is 7.000000000000001 in doubles: a naive ceil
  // gives 8); ceil(0.1 * 4) = 1, raised to 2; ceil(1.0 * 8) = 8.
  EXPECT_EQ(build(26, 26, 1, 0.28)->threshold("c00"), 7);
  EXPECT_EQ(build(12, 4, 1, 0.1)->threshold("c00"), 2);
  EXPECT_EQ(build(30, 8, 1, 1.0)->threshold("c00"), 8);
}

// Pearson's chi-square statistic of the bytes of `words` against the uniform distribution.
double byte_chi_square(const std::vector<uint32_t>& words) {
  std::array<double, 256> counts{};
  for (uint32_t w : words) {
    for (int i = 0; i < 4; ++i) counts[(w >> (8 * i)) & 0xff] += 1;
  }
  const double expected = 4.0 * static_cast<double>(words.size()) / 256.0;
  double chi2 = 0;
  for (double c : counts) chi2 += (c - expected) * (c - expected) / expected;
  return chi2;
}

TEST(SecAggTest, MaskedInputOfAllZerosLooksUniform) {
  // The 0.999 quantile of chi-square with 255 degrees of freedom: 330.52 (R: qchisq(0.999, 255)
  // = 330.5197; the Wilson-Hilferty approximation 255 * (1 - 2/2295 + 3.0902 * sqrt(2/2295))^3
  // gives 330.55). A truly uniform stream exceeds it with probability 1e-3; the keys come from the
  // OS CSPRNG, so to keep the test from flaking we ask that at least one of two clients' masked
  // inputs pass (false failure probability 1e-6), and that neither is far off (the 1e-9 quantile
  // would be ~ 393; we use 400).
  constexpr double kQuantile999 = 330.52;
  constexpr size_t kWords = 16384;  // 64 KiB
  Federation f(/*n=*/12, /*k=*/4, kWords);
  for (auto& [id, x] : f.inputs) std::fill(x.begin(), x.end(), 0u);
  Outcome out = expect_exact(f);
  const double chi_a = byte_chi_square(out.masked["c00"]);
  const double chi_b = byte_chi_square(out.masked["c01"]);
  EXPECT_TRUE(chi_a < kQuantile999 || chi_b < kQuantile999) << chi_a << " " << chi_b;
  EXPECT_LT(chi_a, 400.0);
  EXPECT_LT(chi_b, 400.0);
  // And the unmasked sum of zeros is exactly zero.
  EXPECT_EQ(out.sum, std::vector<uint32_t>(kWords, 0u));
  // The test statistic would catch a non-uniform stream: the all-zero input itself scores huge.
  EXPECT_GT(byte_chi_square(f.inputs["c00"]), 1e6);
}

}  // namespace
}  // namespace fedtail::privacy
