// TokenPolicy: who may join a coordinator with a join token (common/security/join_token.h). It
// holds the secret, this coordinator's federation, and a revocation list read from a file that an
// operator edits while the coordinator runs.
//
// Revocation file (--token-revocation-file): one entry per line, either a client id (every token
// of that id is refused) or a token's MAC (its last 64 hex digits: that one token is refused);
// '#' starts a comment, blank lines are ignored. The file is looked at (stat) at most once per
// `recheck_interval` during check(), and re-read when its modification time, size or inode
// changed. A re-read that fails (file gone, unreadable, a bad line) keeps the previous list and
// logs a warning; the list is not emptied by accident.
//
// Thread-safe: check() may be called from any thread (gRPC's callback threads).
#ifndef FEDTAIL_COORDINATOR_TOKEN_POLICY_H_
#define FEDTAIL_COORDINATOR_TOKEN_POLICY_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <ctime>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>

#include "common/base/status.h"
#include "common/security/join_token.h"

namespace fedtail::coordinator {

struct TokenPolicyOptions {
  std::string secret;                           // the HMAC key (read_secret_file); not empty
  std::string federation = kDefaultFederation;  // the federation tokens must name (--federation)
  std::string revocation_file;                  // "" = nothing is revoked
  // How often, at most, check() looks at the revocation file's modification time.
  std::chrono::milliseconds recheck_interval{1000};
};

class TokenPolicy {
 public:
  // Validates the options and reads the revocation file. kInvalidArgument for an empty secret, a
  // bad federation name (naming --federation) or a bad line of the revocation file (naming the
  // file and the line); kNotFound / kIOError when the revocation file is missing or unreadable.
  static Result<std::unique_ptr<TokenPolicy>> create(TokenPolicyOptions options);

  TokenPolicy(const TokenPolicy&) = delete;
  TokenPolicy& operator=(const TokenPolicy&) = delete;

  // OK when `token` admits `client_id` now (the system clock). Otherwise the reason, never
  // repeating the token or the secret: the errors of check_join_token, or kFailedPrecondition
  // "revoked ..." when the client id or the token's MAC is in the revocation list. May stat and
  // re-read the revocation file (blocks for that read).
  Status check(std::string_view client_id, std::string_view token);
  // The same at `now_unix_s` (Unix seconds), for tests.
  Status check(std::string_view client_id, std::string_view token, int64_t now_unix_s);

  const std::string& federation() const { return options_.federation; }
  // Entries of the revocation list in force (for logs and tests).
  size_t revoked_count() const;

 private:
  explicit TokenPolicy(TokenPolicyOptions options) : options_(std::move(options)) {}

  // Re-reads the revocation file when due and changed. Requires mu_.
  void maybe_reload();
  struct Revoked {
    std::set<std::string> entries;  // as written: client ids (and MACs, which are valid ids too)
    std::set<std::string> macs;     // entries of 64 hex digits, lower-cased
  };
  // Reads and parses the revocation file. Errors as create().
  Result<Revoked> load() const;

  // Constant after construction.
  const TokenPolicyOptions options_;

  // State below is protected by mu_.
  mutable std::mutex mu_;
  Revoked revoked_;
  std::chrono::steady_clock::time_point next_check_{};
  timespec mtime_{};  // of the file as last read (or last failed to read)
  off_t size_ = -1;
  ino_t inode_ = 0;
};

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_TOKEN_POLICY_H_
