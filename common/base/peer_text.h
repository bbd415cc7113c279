// Checks and bounds for text that arrives from a peer (client ids, error messages, reasons) before
// it reaches a log line, metrics.jsonl or a reply: ids must be short and plain, free text is cut
// to a bound with the cut marked and control characters replaced, so that no peer can forge log
// lines, drive a terminal or fill a disk.
#ifndef FEDTAIL_COMMON_BASE_PEER_TEXT_H_
#define FEDTAIL_COMMON_BASE_PEER_TEXT_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "common/base/status.h"

namespace fedtail {

// The longest client id: the X.509 bound on a certificate's common name.
constexpr size_t kMaxClientIdLength = 64;

// OK when `id` is 1..kMaxClientIdLength characters of letters, digits, '.', '_' and '-', not
// starting with '.' (ids name files on clients and certificates). Otherwise kInvalidArgument
// "<what>: ...". The message quotes the id only when it is made of allowed characters (a bad id
// may hold newlines or terminal escapes), and then at most kMaxClientIdLength of them.
Status validate_client_id(std::string_view id, const std::string& what);

// The most bytes of free text from a peer kept by bounded_text() by default.
constexpr size_t kMaxPeerTextBytes = 1024;

// `text` made safe to log and store: at most `max_bytes` bytes of it (never splitting a UTF-8
// sequence), control characters (below 0x20 and 0x7f) replaced by '?', and, when cut,
// " [... N more bytes cut]" appended.
std::string bounded_text(std::string_view text, size_t max_bytes = kMaxPeerTextBytes);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_BASE_PEER_TEXT_H_
