#include "projector_faults.hpp"

#include "sqlite_backend.hpp"

namespace fault {
INSTANTIATE_TYPED_TEST_SUITE_P(sqlite, projector_faults, cleave::testing::sqlite_backend);
}  // namespace fault
