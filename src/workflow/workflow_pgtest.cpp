#include "workflow_suite.hpp"

#include "postgres_backend.hpp"

namespace workflows {
INSTANTIATE_TYPED_TEST_SUITE_P(postgres, scheduling, cleave::testing::postgres_backend);
}  // namespace workflows
