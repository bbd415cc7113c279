// RunCredentials: the TLS certificates and the join-token secret made for one simulation run whose
// workers dial the coordinator over the network (fedtail-sim --launcher slurm). A throwaway CA
// signs the coordinator's certificate for the names the workers dial; the CA's private key is
// deleted once it has signed (nothing else is ever signed with it); workers verify the coordinator
// against ca.pem and derive their virtual clients' join tokens from the secret
// (fedtail-client --token-secret-file). Made through common/security/certs.h (OpenSSL's API).
//
// Layout of `dir` (on a filesystem the workers' nodes share): ca.pem, server.pem, server.key
// (0600), token.secret (0600). Every call replaces the files: a resumed run gets new ones for the
// host it now runs on.
//
// Thread-safe (no shared state); blocks for the disk.
#ifndef FEDTAIL_SIMULATIONS_RUN_CREDENTIALS_H_
#define FEDTAIL_SIMULATIONS_RUN_CREDENTIALS_H_

#include <string>
#include <vector>

#include "common/base/status.h"

namespace fedtail::simulation {

struct RunCredentials {
  std::string ca_cert;       // what workers pass as --tls-ca
  std::string server_cert;   // the coordinator's --tls-cert
  std::string server_key;    // the coordinator's --tls-key
  std::string token_secret;  // --token-secret-file of the coordinator and of the workers
};

// Makes the files in `dir` (created if missing) for a coordinator reached by `hosts` (DNS names or
// IP addresses, at least one; duplicates are dropped), valid for `days` days. kInvalidArgument
// naming a bad host name; kIOError naming a file that cannot be written.
Result<RunCredentials> make_run_credentials(const std::string& dir,
                                            const std::vector<std::string>& hosts, int days = 30);

}  // namespace fedtail::simulation

#endif  // FEDTAIL_SIMULATIONS_RUN_CREDENTIALS_H_
