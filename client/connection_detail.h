// Helpers shared by Connection's two source files (connection.cc: the channel and the RPCs;
// connection_retry.cc: the retry policy, which defines them). Internal to Connection: not for other
// callers.
#ifndef FEDTAIL_CLIENT_CONNECTION_DETAIL_H_
#define FEDTAIL_CLIENT_CONNECTION_DETAIL_H_

#include <grpcpp/support/status.h>

#include <string>

namespace fedtail::client::detail {

// A failed RPC's status as text for logs and errors (from_grpc(status).message()).
std::string describe(const grpc::Status& status);

// A hint appended to connection failures whose text points at a TLS problem: for a `plaintext`
// channel, any UNAVAILABLE ("pass --tls-ca"); for a TLS one, a handshake/SSL/certificate error
// ("check --tls-ca, --tls-cert and --tls-key"). Starts with a space; "" when there is nothing to
// add.
std::string tls_hint(const grpc::Status& status, bool plaintext);

}  // namespace fedtail::client::detail

#endif  // FEDTAIL_CLIENT_CONNECTION_DETAIL_H_
