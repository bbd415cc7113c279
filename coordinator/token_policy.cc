#include "coordinator/token_policy.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "common/base/peer_text.h"

namespace fedtail::coordinator {
namespace {

constexpr size_t kMacHexDigits = 64;

bool is_mac(std::string_view entry) {
  if (entry.size() != kMacHexDigits) return false;
  for (char c : entry) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

int64_t now_unix_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Result<std::unique_ptr<TokenPolicy>> TokenPolicy::create(TokenPolicyOptions options) {
  if (options.secret.empty()) {
    return Status::InvalidArgument("--token-secret-file: the join-token secret is empty");
  }
  FEDTAIL_RETURN_IF_ERROR(validate_federation_name(options.federation, "--federation"));
  std::unique_ptr<TokenPolicy> policy(new TokenPolicy(std::move(options)));
  if (!policy->options_.revocation_file.empty()) {
    std::lock_guard<std::mutex> lock(policy->mu_);
    struct stat st {};
    if (::stat(policy->options_.revocation_file.c_str(), &st) != 0) {
      return Status::NotFound("--token-revocation-file: cannot stat " +
                              policy->options_.revocation_file + ": " + std::strerror(errno));
    }
    FEDTAIL_ASSIGN_OR_RETURN(policy->revoked_, policy->load());
    policy->mtime_ = st.st_mtim;
    policy->size_ = st.st_size;
    policy->inode_ = st.st_ino;
    policy->next_check_ = std::chrono::steady_clock::now() + policy->options_.recheck_interval;
    spdlog::info("--token-revocation-file {}: {} revoked client id(s) or token(s)",
                 policy->options_.revocation_file, policy->revoked_.entries.size());
  }
  return policy;
}

Status TokenPolicy::check(std::string_view client_id, std::string_view token) {
  return check(client_id, token, now_unix_s());
}

Status TokenPolicy::check(std::string_view client_id, std::string_view token, int64_t now_unix_s) {
  FEDTAIL_RETURN_IF_ERROR(
      check_join_token(options_.secret, client_id, token, options_.federation, now_unix_s));
  if (options_.revocation_file.empty()) return Status::OK();
  // A token that passed check_join_token parses.
  Result<ParsedJoinToken> parsed = parse_join_token(token);
  FEDTAIL_CHECK(parsed.ok());
  std::lock_guard<std::mutex> lock(mu_);
  maybe_reload();
  if (revoked_.entries.count(std::string(client_id)) > 0) {
    return Status::FailedPrecondition("revoked: client \"" + std::string(client_id) +
                                      "\" is on the coordinator's revocation list");
  }
  if (revoked_.macs.count(parsed->mac_hex) > 0) {
    return Status::FailedPrecondition(
        "revoked: this token is on the coordinator's revocation list");
  }
  return Status::OK();
}

size_t TokenPolicy::revoked_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return revoked_.entries.size();
}

void TokenPolicy::maybe_reload() {
  const auto now = std::chrono::steady_clock::now();
  if (now < next_check_) return;
  next_check_ = now + options_.recheck_interval;
  const std::string& path = options_.revocation_file;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (size_ != -1) {  // warn once per disappearance
      spdlog::warn(
          "--token-revocation-file {}: cannot stat ({}); keeping the {} entries read before", path,
          std::strerror(errno), revoked_.entries.size());
      size_ = -1;
      inode_ = 0;
      mtime_ = {};
    }
    return;
  }
  if (st.st_mtim.tv_sec == mtime_.tv_sec && st.st_mtim.tv_nsec == mtime_.tv_nsec &&
      st.st_size == size_ && st.st_ino == inode_) {
    return;
  }
  // Recorded before reading: a change while reading shows as another change at the next check.
  mtime_ = st.st_mtim;
  size_ = st.st_size;
  inode_ = st.st_ino;
  Result<Revoked> loaded = load();
  if (!loaded.ok()) {
    spdlog::warn("{}; keeping the {} entries read before", loaded.status().message(),
                 revoked_.entries.size());
    return;
  }
  revoked_ = std::move(*loaded);
  spdlog::info("--token-revocation-file {} re-read: {} revoked client id(s) or token(s)", path,
               revoked_.entries.size());
}

Result<TokenPolicy::Revoked> TokenPolicy::load() const {
  const std::string& path = options_.revocation_file;
  std::ifstream in(path);
  if (!in) return Status::IOError("--token-revocation-file: cannot open " + path);
  Revoked revoked;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    const size_t hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    size_t begin = 0;
    size_t end = line.size();
    while (begin < end && std::isspace(static_cast<unsigned char>(line[begin]))) ++begin;
    while (end > begin && std::isspace(static_cast<unsigned char>(line[end - 1]))) --end;
    const std::string_view entry = std::string_view(line).substr(begin, end - begin);
    if (entry.empty()) continue;
    // A MAC (or an id that looks like one: revoked either way).
    if (is_mac(entry)) revoked.macs.insert(lower(entry));
    if (!is_mac(entry) && !validate_client_id(entry, "id").ok()) {
      return Status::InvalidArgument("--token-revocation-file: " + path + " line " +
                                     std::to_string(number) +
                                     ": neither a client id nor a token MAC (64 hex digits)");
    }
    revoked.entries.insert(std::string(entry));
  }
  if (in.bad()) return Status::IOError("--token-revocation-file: cannot read " + path);
  return revoked;
}

}  // namespace fedtail::coordinator
