// Certificates and secrets for a fedtail federation, made through OpenSSL's API (no `openssl`
// binary): a certificate authority, a server certificate with subject alternative names, client
// certificates whose CN is the client id (the identity a mutual-TLS coordinator sees), and the
// shared secret of join tokens. Used by fedtail-certs and by tests.
//
// Keys are ECDSA P-256; certificates are X.509 v3 signed with SHA-256, valid from one hour before
// their creation (clock skew) for `days` days. Keys, serial numbers and secrets come from OpenSSL's
// CSPRNG — the one deliberate exception to "all randomness from Rng": they must be unpredictable,
// not reproducible. Files are written atomically (temporary file, fsync, rename); private keys and
// secrets with mode 0600, certificates 0644. Existing files are replaced only with `overwrite`.
//
// Thread-safe (no shared state); blocks for the disk.
#ifndef FEDTAIL_COMMON_SECURITY_CERTS_H_
#define FEDTAIL_COMMON_SECURITY_CERTS_H_

#include <string>
#include <vector>

#include "common/base/status.h"

namespace fedtail::certs {

// File names inside the output directories.
inline constexpr char kCaCertFile[] = "ca.pem";
inline constexpr char kCaKeyFile[] = "ca.key";
inline constexpr char kServerCertFile[] = "server.pem";
inline constexpr char kServerKeyFile[] = "server.key";
// A client's files are "<client-id>.pem" and "<client-id>.key", so that one directory can hold
// the certificates of many clients.
std::string client_cert_file(const std::string& client_id);
std::string client_key_file(const std::string& client_id);

// Makes a self-signed CA (basicConstraints CA:TRUE, keyCertSign) in `out_dir` (created if missing):
// ca.pem and ca.key. kInvalidArgument for days < 1 or an empty/too long common name;
// kFailedPrecondition naming the file when one exists and !overwrite; kIOError naming the file.
Status make_ca(const std::string& out_dir, const std::string& common_name, int days,
               bool overwrite);

// Makes server.pem / server.key in `out_dir`, signed by the CA in `ca_dir` (ca.pem + ca.key), for
// serverAuth, with one subjectAltName per entry of `sans`: IP:<addr> for IPv4/IPv6 literals,
// DNS:<name> otherwise (validated: letters, digits, '-', '.', a leading "*." wildcard).
// `common_name` "" = the first SAN. Errors: kInvalidArgument for an empty SAN list or a bad entry
// (naming it), kNotFound naming a missing CA file, others as make_ca.
Status make_server_certificate(const std::string& ca_dir, const std::string& out_dir,
                               const std::vector<std::string>& sans, const std::string& common_name,
                               int days, bool overwrite);

// Makes <client_id>.pem / <client_id>.key in `out_dir`, signed by the CA in `ca_dir`, for
// clientAuth, with CN = `client_id` (letters, digits, '.', '_', '-'; 1..64 characters; not
// starting with '.'; kInvalidArgument otherwise). Other errors as make_server_certificate.
Status make_client_certificate(const std::string& ca_dir, const std::string& out_dir,
                               const std::string& client_id, int days, bool overwrite);

// Writes a new random secret (32 bytes as 64 lower-case hex characters and a newline) to `path`,
// mode 0600: the --token-secret-file of a coordinator. Errors as make_ca.
Status make_secret_file(const std::string& path, bool overwrite);

// Splits "localhost,127.0.0.1, host.example" into trimmed entries and validates each (see
// make_server_certificate). kInvalidArgument naming the bad entry.
Result<std::vector<std::string>> parse_san_list(const std::string& text);

// The subject CN of the PEM certificate at `path`. kNotFound / kIOError for the file,
// kInvalidArgument when it is not a PEM certificate or has no CN.
Result<std::string> certificate_common_name(const std::string& path);

// The subjectAltNames of the PEM certificate at `path`, as "DNS:<name>" / "IP:<address>", in
// certificate order. Errors as certificate_common_name.
Result<std::vector<std::string>> certificate_subject_alt_names(const std::string& path);

// Verifies that the certificate at `cert_path` chains to the CA certificate at `ca_path` and is
// valid now (X509_verify_cert). kFailedPrecondition with OpenSSL's reason when it does not.
Status verify_certificate(const std::string& cert_path, const std::string& ca_path);

}  // namespace fedtail::certs

#endif  // FEDTAIL_COMMON_SECURITY_CERTS_H_
