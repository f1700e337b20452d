#include "workflow_suite.hpp"

#include "sqlite_backend.hpp"

namespace shop_workflow {
INSTANTIATE_TYPED_TEST_SUITE_P(sqlite, payment_deadlines, cleave::testing::sqlite_backend);
}  // namespace shop_workflow
