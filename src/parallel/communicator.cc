// Non-virtual parts of the communicator interface (communicator.h): element sizes, and the error
// helper of the CUDA-compiled NCCL communicator (nccl_communicator.h).
#include "parallel/communicator.h"

#include <string>

#include "core/error.h"

namespace frugal {

size_t comm_type_size(CommType type) {
  switch (type) {
    case CommType::F32: return 4;
    case CommType::F64: return 8;
    case CommType::BF16: return 2;
    case CommType::U8: return 1;
    case CommType::I32: return 4;
    case CommType::I64: return 8;
  }
  fail("communicator: unknown element type {}", static_cast<int>(type));
}

namespace detail {
void throw_communicator_error(const std::string& message) { throw Error(message); }
}  // namespace detail

}  // namespace frugal
