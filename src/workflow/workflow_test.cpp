#include "workflow_suite.hpp"

#include "sqlite_backend.hpp"

namespace workflows {
INSTANTIATE_TYPED_TEST_SUITE_P(sqlite, scheduling, cleave::testing::sqlite_backend);
}  // namespace workflows
