#include "projector_faults.hpp"

#include "postgres_backend.hpp"

namespace fault {
INSTANTIATE_TYPED_TEST_SUITE_P(postgres, projector_faults, cleave::testing::postgres_backend);
}  // namespace fault
