#include "common/security/certs.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "common/base/temp_file.h"
#include "common/security/crypto.h"

namespace fedtail::certs {

namespace {

struct BioFree {
  void operator()(BIO* p) const { BIO_free_all(p); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
struct ExtFree {
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
};
struct BnFree {
  void operator()(BIGNUM* p) const { BN_free(p); }
};
struct StoreFree {
  void operator()(X509_STORE* p) const { X509_STORE_free(p); }
};
struct StoreCtxFree {
  void operator()(X509_STORE_CTX* p) const { X509_STORE_CTX_free(p); }
};
struct NamesFree {
  void operator()(GENERAL_NAMES* p) const { GENERAL_NAMES_free(p); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;

constexpr int kMaxCommonName = 64;  // ub-common-name (RFC 5280)
constexpr long kSkewSeconds = 3600;

// OpenSSL's queued error text, or `fallback`; clears the queue.
std::string openssl_error(const char* fallback) {
  unsigned long code = ERR_get_error();
  std::string text = fallback;
  if (code != 0) {
    char buffer[256];
    ERR_error_string_n(code, buffer, sizeof(buffer));
    text += std::string(" (") + buffer + ")";
  }
  ERR_clear_error();
  return text;
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

std::string join_path(const std::string& dir, const std::string& name) {
  return (std::filesystem::path(dir) / name).string();
}

Status ensure_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::IOError(dir + ": cannot create the directory (" + ec.message() + ")");
  return Status::OK();
}

Status check_overwrite(const std::vector<std::string>& paths, bool overwrite) {
  if (overwrite) return Status::OK();
  for (const std::string& path : paths) {
    if (file_exists(path)) {
      return Status::FailedPrecondition(path + ": exists; pass --force to replace it");
    }
  }
  return Status::OK();
}

// Writes `data` to `path` with `mode`: to a new temporary file (create_temp_file: exclusive,
// never a planted symlink or FIFO, created with that mode), fsync, rename.
Status write_file_atomic(const std::string& path, const std::string& data, mode_t mode) {
  Result<TempFile> temp = create_temp_file(path, mode);
  if (!temp.ok()) return temp.status().with_context(path);
  const std::string tmp = temp->path;
  const int fd = temp->fd;
  auto io_error = [&](const char* step) {
    std::string message = path + ": " + step + " failed (" + std::strerror(errno) + ")";
    ::unlink(tmp.c_str());
    return Status::IOError(message);
  };
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      errno = err;
      return io_error("write");
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    errno = err;
    return io_error("fsync");
  }
  if (::close(fd) != 0) return io_error("close");
  if (::rename(tmp.c_str(), path.c_str()) != 0) return io_error("rename");
  return Status::OK();
}

Result<std::string> read_file(const std::string& path) {
  if (!file_exists(path)) return Status::NotFound(path + ": file not found");
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IOError(path + ": cannot open");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return Status::IOError(path + ": cannot read");
  return buffer.str();
}

Result<PkeyPtr> new_key() {
  PkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) return Status::Internal(openssl_error("EC P-256 key generation failed"));
  return key;
}

Result<std::string> key_to_pem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return Status::Internal(openssl_error("cannot encode the private key"));
  }
  char* data = nullptr;
  long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

Result<std::string> cert_to_pem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) {
    return Status::Internal(openssl_error("cannot encode the certificate"));
  }
  char* data = nullptr;
  long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

Result<X509Ptr> load_cert(const std::string& path) {
  FEDTAIL_ASSIGN_OR_RETURN(std::string pem, read_file(path));
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert)
    return Status::InvalidArgument(openssl_error((path + ": not a PEM certificate").c_str()));
  return cert;
}

Result<PkeyPtr> load_key(const std::string& path) {
  FEDTAIL_ASSIGN_OR_RETURN(std::string pem, read_file(path));
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key)
    return Status::InvalidArgument(openssl_error((path + ": not a PEM private key").c_str()));
  return key;
}

Status check_common_name(const std::string& cn, const std::string& what) {
  if (cn.empty()) return Status::InvalidArgument(what + ": must not be empty");
  if (cn.size() > kMaxCommonName) {
    return Status::InvalidArgument(what + ": longer than " + std::to_string(kMaxCommonName) +
                                   " characters (the X.509 limit)");
  }
  return Status::OK();
}

Status add_extension(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
  std::unique_ptr<X509_EXTENSION, ExtFree> ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value));
  if (!ext) {
    return Status::Internal(openssl_error(
        (std::string("cannot make the ") + OBJ_nid2sn(nid) + " extension \"" + value + "\"")
            .c_str()));
  }
  if (X509_add_ext(cert, ext.get(), -1) != 1) {
    return Status::Internal(openssl_error("cannot add a certificate extension"));
  }
  return Status::OK();
}

// A certificate for `key` named `cn`, valid for `days`, with a random 159-bit serial. Issued by
// `issuer` (null: self-issued); the caller adds extensions and signs.
Result<X509Ptr> new_certificate(EVP_PKEY* key, const std::string& cn, int days, X509* issuer) {
  X509Ptr cert(X509_new());
  if (!cert) return Status::Internal(openssl_error("X509_new failed"));
  std::unique_ptr<BIGNUM, BnFree> serial(BN_new());
  if (!serial || BN_rand(serial.get(), 159, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
      !BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get()))) {
    return Status::Internal(openssl_error("cannot draw a serial number"));
  }
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (X509_set_version(cert.get(), 2) != 1 ||
      !X509_gmtime_adj(X509_getm_notBefore(cert.get()), -kSkewSeconds) ||
      !X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(days) * 86400L) ||
      X509_set_pubkey(cert.get(), key) != 1 ||
      X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>("fedtail"), -1, -1,
                                 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                                 0) != 1 ||
      X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name) != 1) {
    return Status::Internal(openssl_error("cannot fill in the certificate"));
  }
  return cert;
}

bool is_ip_literal(const std::string& text) {
  unsigned char buffer[16];
  return inet_pton(AF_INET, text.c_str(), buffer) == 1 ||
         inet_pton(AF_INET6, text.c_str(), buffer) == 1;
}

bool is_dns_name(const std::string& name) {
  if (name.empty() || name.size() > 253) return false;
  std::string rest = name;
  if (rest.rfind("*.", 0) == 0) rest = rest.substr(2);
  if (rest.empty()) return false;
  size_t start = 0;
  while (start <= rest.size()) {
    size_t dot = rest.find('.', start);
    std::string label =
        rest.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-')
      return false;
    for (char c : label) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') return false;
    }
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return true;
}

struct CaPair {
  X509Ptr cert;
  PkeyPtr key;
};

Result<CaPair> load_ca(const std::string& ca_dir) {
  CaPair ca;
  FEDTAIL_ASSIGN_OR_RETURN(ca.cert, load_cert(join_path(ca_dir, kCaCertFile)));
  FEDTAIL_ASSIGN_OR_RETURN(ca.key, load_key(join_path(ca_dir, kCaKeyFile)));
  if (X509_check_private_key(ca.cert.get(), ca.key.get()) != 1) {
    return Status::InvalidArgument(
        openssl_error((ca_dir + ": ca.key does not belong to ca.pem").c_str()));
  }
  return ca;
}

// Makes, signs and writes a leaf certificate + key.
Status make_leaf(const std::string& ca_dir, const std::string& out_dir, const std::string& cn,
                 int days, bool overwrite, const std::string& cert_name,
                 const std::string& key_name, const char* eku, const std::string& san) {
  if (days < 1)
    return Status::InvalidArgument("--days: must be >= 1 (got " + std::to_string(days) + ")");
  const std::string cert_path = join_path(out_dir, cert_name);
  const std::string key_path = join_path(out_dir, key_name);
  FEDTAIL_RETURN_IF_ERROR(check_overwrite({cert_path, key_path}, overwrite));
  FEDTAIL_ASSIGN_OR_RETURN(CaPair ca, load_ca(ca_dir));
  FEDTAIL_ASSIGN_OR_RETURN(PkeyPtr key, new_key());
  FEDTAIL_ASSIGN_OR_RETURN(X509Ptr cert, new_certificate(key.get(), cn, days, ca.cert.get()));
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca.cert.get(), cert.get(), nullptr, nullptr, 0);
  X509V3_set_ctx_nodb(&ctx);
  FEDTAIL_RETURN_IF_ERROR(
      add_extension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE"));
  FEDTAIL_RETURN_IF_ERROR(
      add_extension(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature,keyEncipherment"));
  FEDTAIL_RETURN_IF_ERROR(add_extension(cert.get(), &ctx, NID_ext_key_usage, eku));
  FEDTAIL_RETURN_IF_ERROR(add_extension(cert.get(), &ctx, NID_subject_key_identifier, "hash"));
  FEDTAIL_RETURN_IF_ERROR(
      add_extension(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always"));
  if (!san.empty()) {
    FEDTAIL_RETURN_IF_ERROR(add_extension(cert.get(), &ctx, NID_subject_alt_name, san.c_str()));
  }
  if (X509_sign(cert.get(), ca.key.get(), EVP_sha256()) <= 0) {
    return Status::Internal(openssl_error("signing the certificate failed"));
  }
  FEDTAIL_ASSIGN_OR_RETURN(std::string cert_pem, cert_to_pem(cert.get()));
  FEDTAIL_ASSIGN_OR_RETURN(std::string key_pem, key_to_pem(key.get()));
  FEDTAIL_RETURN_IF_ERROR(ensure_dir(out_dir));
  FEDTAIL_RETURN_IF_ERROR(write_file_atomic(key_path, key_pem, 0600));
  return write_file_atomic(cert_path, cert_pem, 0644);
}

}  // namespace

std::string client_cert_file(const std::string& client_id) { return client_id + ".pem"; }
std::string client_key_file(const std::string& client_id) { return client_id + ".key"; }

Status make_ca(const std::string& out_dir, const std::string& common_name, int days,
               bool overwrite) {
  if (days < 1)
    return Status::InvalidArgument("--days: must be >= 1 (got " + std::to_string(days) + ")");
  FEDTAIL_RETURN_IF_ERROR(check_common_name(common_name, "--cn"));
  const std::string cert_path = join_path(out_dir, kCaCertFile);
  const std::string key_path = join_path(out_dir, kCaKeyFile);
  FEDTAIL_RETURN_IF_ERROR(check_overwrite({cert_path, key_path}, overwrite));
  FEDTAIL_ASSIGN_OR_RETURN(PkeyPtr key, new_key());
  FEDTAIL_ASSIGN_OR_RETURN(X509Ptr cert, new_certificate(key.get(), common_name, days, nullptr));
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  X509V3_set_ctx_nodb(&ctx);
  FEDTAIL_RETURN_IF_ERROR(
      add_extension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE"));
  FEDTAIL_RETURN_IF_ERROR(
      add_extension(cert.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign"));
  FEDTAIL_RETURN_IF_ERROR(add_extension(cert.get(), &ctx, NID_subject_key_identifier, "hash"));
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0) {
    return Status::Internal(openssl_error("signing the CA certificate failed"));
  }
  FEDTAIL_ASSIGN_OR_RETURN(std::string cert_pem, cert_to_pem(cert.get()));
  FEDTAIL_ASSIGN_OR_RETURN(std::string key_pem, key_to_pem(key.get()));
  FEDTAIL_RETURN_IF_ERROR(ensure_dir(out_dir));
  FEDTAIL_RETURN_IF_ERROR(write_file_atomic(key_path, key_pem, 0600));
  return write_file_atomic(cert_path, cert_pem, 0644);
}

Result<std::vector<std::string>> parse_san_list(const std::string& text) {
  std::vector<std::string> sans;
  std::stringstream in(text);
  std::string entry;
  int position = 0;
  while (std::getline(in, entry, ',')) {
    ++position;
    size_t b = entry.find_first_not_of(" \t");
    size_t e = entry.find_last_not_of(" \t");
    entry = b == std::string::npos ? "" : entry.substr(b, e - b + 1);
    if (entry.empty()) {
      return Status::InvalidArgument("--san: entry " + std::to_string(position) + " is empty");
    }
    if (!is_ip_literal(entry) && !is_dns_name(entry)) {
      return Status::InvalidArgument("--san: \"" + entry +
                                     "\" is neither an IP address nor a DNS name");
    }
    sans.push_back(entry);
  }
  if (sans.empty()) return Status::InvalidArgument("--san: give at least one name or address");
  return sans;
}

Status make_server_certificate(const std::string& ca_dir, const std::string& out_dir,
                               const std::vector<std::string>& sans, const std::string& common_name,
                               int days, bool overwrite) {
  if (sans.empty()) return Status::InvalidArgument("--san: give at least one name or address");
  std::string san;
  for (const std::string& entry : sans) {
    if (is_ip_literal(entry)) {
      san += (san.empty() ? "" : ",") + std::string("IP:") + entry;
    } else if (is_dns_name(entry)) {
      san += (san.empty() ? "" : ",") + std::string("DNS:") + entry;
    } else {
      return Status::InvalidArgument("--san: \"" + entry +
                                     "\" is neither an IP address nor a DNS name");
    }
  }
  const std::string cn = common_name.empty() ? sans.front() : common_name;
  FEDTAIL_RETURN_IF_ERROR(check_common_name(cn, "--cn"));
  return make_leaf(ca_dir, out_dir, cn, days, overwrite, kServerCertFile, kServerKeyFile,
                   "serverAuth", san);
}

Status make_client_certificate(const std::string& ca_dir, const std::string& out_dir,
                               const std::string& client_id, int days, bool overwrite) {
  FEDTAIL_RETURN_IF_ERROR(check_common_name(client_id, "--id"));
  if (client_id[0] == '.') {
    return Status::InvalidArgument("--id: must not start with '.' (got \"" + client_id + "\")");
  }
  for (char c : client_id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) {
      return Status::InvalidArgument(
          "--id: may hold only letters, digits, '.', '_' and '-' (got \"" + client_id + "\")");
    }
  }
  return make_leaf(ca_dir, out_dir, client_id, days, overwrite, client_cert_file(client_id),
                   client_key_file(client_id), "clientAuth", "");
}

Status make_secret_file(const std::string& path, bool overwrite) {
  FEDTAIL_RETURN_IF_ERROR(check_overwrite({path}, overwrite));
  std::array<unsigned char, 32> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) {
    return Status::Internal(openssl_error("RAND_bytes failed"));
  }
  std::string secret = to_hex(bytes.data(), bytes.size()) + "\n";
  OPENSSL_cleanse(bytes.data(), bytes.size());
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) FEDTAIL_RETURN_IF_ERROR(ensure_dir(parent.string()));
  Status written = write_file_atomic(path, secret, 0600);
  OPENSSL_cleanse(secret.data(), secret.size());
  return written;
}

Result<std::string> certificate_common_name(const std::string& path) {
  FEDTAIL_ASSIGN_OR_RETURN(X509Ptr cert, load_cert(path));
  X509_NAME* name = X509_get_subject_name(cert.get());
  int index = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (index < 0) return Status::InvalidArgument(path + ": the certificate has no CN");
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, index));
  unsigned char* utf8 = nullptr;
  int length = ASN1_STRING_to_UTF8(&utf8, data);
  if (length < 0) return Status::InvalidArgument(openssl_error((path + ": unreadable CN").c_str()));
  std::string cn(reinterpret_cast<char*>(utf8), static_cast<size_t>(length));
  OPENSSL_free(utf8);
  return cn;
}

Result<std::vector<std::string>> certificate_subject_alt_names(const std::string& path) {
  FEDTAIL_ASSIGN_OR_RETURN(X509Ptr cert, load_cert(path));
  std::vector<std::string> out;
  std::unique_ptr<GENERAL_NAMES, NamesFree> names(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert.get(), NID_subject_alt_name, nullptr, nullptr)));
  if (!names) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    if (name->type == GEN_DNS) {
      const ASN1_STRING* s = name->d.dNSName;
      out.push_back("DNS:" + std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                         static_cast<size_t>(ASN1_STRING_length(s))));
    } else if (name->type == GEN_IPADD) {
      const ASN1_OCTET_STRING* s = name->d.iPAddress;
      char text[INET6_ADDRSTRLEN] = {0};
      const int length = ASN1_STRING_length(s);
      const int family = length == 4 ? AF_INET : AF_INET6;
      if ((length == 4 || length == 16) &&
          inet_ntop(family, ASN1_STRING_get0_data(s), text, sizeof(text)) != nullptr) {
        out.push_back(std::string("IP:") + text);
      }
    }
  }
  return out;
}

Status verify_certificate(const std::string& cert_path, const std::string& ca_path) {
  FEDTAIL_ASSIGN_OR_RETURN(X509Ptr cert, load_cert(cert_path));
  FEDTAIL_ASSIGN_OR_RETURN(X509Ptr ca, load_cert(ca_path));
  std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
  std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
  if (!store || !ctx || X509_STORE_add_cert(store.get(), ca.get()) != 1 ||
      X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), nullptr) != 1) {
    return Status::Internal(openssl_error("cannot set up certificate verification"));
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    int error = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return Status::FailedPrecondition(cert_path + ": does not verify against " + ca_path + " (" +
                                      X509_verify_cert_error_string(error) + ")");
  }
  return Status::OK();
}

}  // namespace fedtail::certs
