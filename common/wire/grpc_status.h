// The one place where fedtail::Status and grpc::Status are mapped onto each other.
//
// Codes map one to one where both sides have the code (kInvalidArgument <-> INVALID_ARGUMENT,
// kNotFound <-> NOT_FOUND, kUnavailable <-> UNAVAILABLE, kDeadlineExceeded <-> DEADLINE_EXCEEDED,
// kFailedPrecondition <-> FAILED_PRECONDITION, kResourceExhausted <-> RESOURCE_EXHAUSTED,
// kInternal <-> INTERNAL); kCorruption -> DATA_LOSS, kIOError -> INTERNAL. gRPC codes without a
// fedtail counterpart: UNAUTHENTICATED, PERMISSION_DENIED -> kFailedPrecondition; ALREADY_EXISTS,
// OUT_OF_RANGE -> kInvalidArgument; ABORTED -> kUnavailable; CANCELLED -> kUnavailable (both
// retryable); UNIMPLEMENTED, UNKNOWN -> kInternal. The message is kept; from_grpc prefixes it with
// the gRPC code's name ("UNAUTHENTICATED: bad join token") so that the original code stays visible.
// Thread-safe (pure functions).
#ifndef FEDTAIL_COMMON_WIRE_GRPC_STATUS_H_
#define FEDTAIL_COMMON_WIRE_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "common/base/status.h"

namespace fedtail {

grpc::Status to_grpc(const Status& status);
Status from_grpc(const grpc::Status& status);

// The name of a gRPC status code, e.g. "UNAUTHENTICATED".
const char* grpc_code_name(grpc::StatusCode code);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_WIRE_GRPC_STATUS_H_
