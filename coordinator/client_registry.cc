#include "coordinator/client_registry.h"

#include <openssl/rand.h>

#include <algorithm>
#include <cstdio>
#include <set>

#include "common/security/crypto.h"

namespace fedtail::coordinator {

bool SessionView::serves(const std::string& client_id) const {
  return std::binary_search(client_ids.begin(), client_ids.end(), client_id);
}

int64_t SessionView::declared_examples(const std::string& client_id) const {
  auto it = std::lower_bound(client_ids.begin(), client_ids.end(), client_id);
  if (it == client_ids.end() || *it != client_id) return 0;
  return num_examples[static_cast<size_t>(it - client_ids.begin())];
}

std::string random_token(size_t bytes) {
  std::string raw(bytes, '\0');
  FEDTAIL_CHECK(
      RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), static_cast<int>(raw.size())) == 1);
  return to_hex(raw);
}

ClientRegistry::ClientRegistry(std::chrono::milliseconds client_timeout, ClockFn clock)
    : client_timeout_(client_timeout),
      clock_(clock ? std::move(clock) : ClockFn([] { return SteadyClock::now(); })) {}

bool ClientRegistry::live_locked(const Session& session, SteadyClock::time_point now) const {
  return !session.disconnected && now - session.last_seen <= client_timeout_;
}

SessionView ClientRegistry::view_of(const Session& session) {
  SessionView view;
  view.token = session.token;
  view.name = session.name;
  for (const auto& [id, record] : session.clients) {
    view.client_ids.push_back(id);
    view.num_examples.push_back(record.num_examples);
  }
  return view;
}

RemovedSession ClientRegistry::removed_of(const Session& session) {
  RemovedSession removed;
  removed.token = session.token;
  removed.name = session.name;
  for (const auto& [id, record] : session.clients) removed.client_ids.push_back(id);
  return removed;
}

Admission ClientRegistry::admit(const std::string& name, const std::vector<ClientRecord>& clients,
                                int max_clients) {
  Admission admission;
  if (clients.empty()) {
    admission.status = Status::InvalidArgument("join: no client to register");
    return admission;
  }
  std::set<std::string> seen;
  for (const ClientRecord& client : clients) {
    if (client.id.empty()) {
      admission.status = Status::InvalidArgument("join: empty client id");
      return admission;
    }
    if (!seen.insert(client.id).second) {
      admission.status = Status::InvalidArgument("join: client id \"" + client.id + "\" repeated");
      return admission;
    }
  }

  std::lock_guard<std::mutex> lock(mu_);
  const SteadyClock::time_point now = clock_();
  for (const ClientRecord& client : clients) {
    auto owner = owners_.find(client.id);
    if (owner == owners_.end()) continue;
    const Session& session = sessions_.at(owner->second);
    if (live_locked(session, now)) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          session.last_seen + client_timeout_ - now);
      char seconds[32];
      std::snprintf(seconds, sizeof(seconds), "%.1f", left.count() / 1000.0);
      admission.already_connected = true;
      admission.status = Status::FailedPrecondition(
          "client \"" + client.id + "\" is already connected (session \"" + session.name +
          "\"); a silent session expires in " + seconds + " s");
      return admission;
    }
  }

  int new_clients = 0;
  for (const ClientRecord& client : clients) new_clients += owners_.count(client.id) == 0;
  if (static_cast<int64_t>(owners_.size()) + new_clients > max_clients) {
    admission.status = Status::ResourceExhausted(
        "join: the federation is full (" + std::to_string(owners_.size()) + " clients connected, " +
        "federation.max_clients " + std::to_string(max_clients) + ")");
    return admission;
  }

  Session session;
  session.token = random_token();
  session.name = name;
  session.last_seen = now;
  for (const ClientRecord& client : clients) {
    auto owner = owners_.find(client.id);
    if (owner != owners_.end()) {
      // A stale session: the new one takes this client over.
      auto old = sessions_.find(owner->second);
      old->second.clients.erase(client.id);
      if (old->second.clients.empty()) sessions_.erase(old);
      admission.taken_over.push_back(client.id);
    }
    owners_[client.id] = session.token;
    session.clients.emplace(client.id, client);
  }
  admission.session_token = session.token;
  sessions_.emplace(session.token, std::move(session));
  return admission;
}

int ClientRegistry::client_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(owners_.size());
}

Status ClientRegistry::declare(const std::string& token, const std::vector<ClientRecord>& counts,
                               int64_t max_examples) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(token);
  if (it == sessions_.end()) return Status::NotFound("unknown session");
  Session& session = it->second;
  for (const ClientRecord& c : counts) {
    auto record = session.clients.find(c.id);
    if (record == session.clients.end()) {
      return Status::InvalidArgument("declared: this session does not host a client of that id");
    }
    if (c.num_examples < 0 || c.num_examples > max_examples) {
      return Status::InvalidArgument("declared: client \"" + c.id + "\" declares " +
                                     std::to_string(c.num_examples) + " examples (at most " +
                                     std::to_string(max_examples) + ")");
    }
    const int64_t before = record->second.num_examples;
    if (before != 0 && before != c.num_examples) {
      return Status::InvalidArgument("declared: client \"" + c.id + "\" declared " +
                                     std::to_string(before) + " examples already (got " +
                                     std::to_string(c.num_examples) + "); a declaration is final");
    }
  }
  for (const ClientRecord& c : counts) session.clients.at(c.id).num_examples = c.num_examples;
  return Status::OK();
}

std::string ClientRegistry::session_of(const std::string& client_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto owner = owners_.find(client_id);
  return owner == owners_.end() ? std::string() : owner->second;
}

std::optional<SessionView> ClientRegistry::authenticate(const std::string& token) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(token);
  if (it == sessions_.end()) return std::nullopt;
  it->second.last_seen = clock_();
  it->second.disconnected = false;
  return view_of(it->second);
}

bool ClientRegistry::touch(const std::string& token) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(token);
  if (it == sessions_.end()) return false;
  it->second.last_seen = clock_();
  it->second.disconnected = false;
  return true;
}

void ClientRegistry::mark_disconnected(const std::string& token) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(token);
  if (it != sessions_.end()) it->second.disconnected = true;
}

std::optional<RemovedSession> ClientRegistry::leave(const std::string& token) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(token);
  if (it == sessions_.end()) return std::nullopt;
  RemovedSession removed = removed_of(it->second);
  for (const std::string& id : removed.client_ids) owners_.erase(id);
  sessions_.erase(it);
  return removed;
}

std::vector<RemovedSession> ClientRegistry::expire() {
  std::lock_guard<std::mutex> lock(mu_);
  const SteadyClock::time_point now = clock_();
  std::vector<RemovedSession> removed;
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (now - it->second.last_seen > client_timeout_) {
      removed.push_back(removed_of(it->second));
      for (const std::string& id : removed.back().client_ids) owners_.erase(id);
      it = sessions_.erase(it);
    } else {
      ++it;
    }
  }
  return removed;
}

std::optional<SteadyClock::time_point> ClientRegistry::next_expiry() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::optional<SteadyClock::time_point> next;
  for (const auto& [token, session] : sessions_) {
    // expire() removes a session once strictly past its timeout: wake just after it.
    SteadyClock::time_point at = session.last_seen + client_timeout_ + std::chrono::milliseconds(1);
    if (!next || at < *next) next = at;
  }
  return next;
}

std::vector<strategies::ClientInfo> ClientRegistry::available_clients() const {
  std::lock_guard<std::mutex> lock(mu_);
  const SteadyClock::time_point now = clock_();
  std::vector<strategies::ClientInfo> clients;
  for (const auto& [token, session] : sessions_) {
    if (!live_locked(session, now)) continue;
    for (const auto& [id, record] : session.clients) {
      clients.push_back({record.id, record.num_examples, record.model_family});
    }
  }
  std::sort(
      clients.begin(), clients.end(),
      [](const strategies::ClientInfo& a, const strategies::ClientInfo& b) { return a.id < b.id; });
  return clients;
}

int ClientRegistry::available_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  const SteadyClock::time_point now = clock_();
  int count = 0;
  for (const auto& [token, session] : sessions_) {
    if (live_locked(session, now)) count += static_cast<int>(session.clients.size());
  }
  return count;
}

std::vector<std::string> ClientRegistry::live_session_tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  const SteadyClock::time_point now = clock_();
  std::vector<std::string> tokens;
  for (const auto& [token, session] : sessions_) {
    if (live_locked(session, now)) tokens.push_back(token);
  }
  return tokens;
}

int ClientRegistry::session_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(sessions_.size());
}

}  // namespace fedtail::coordinator
