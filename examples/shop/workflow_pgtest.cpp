#include "workflow_suite.hpp"

#include "postgres_backend.hpp"

namespace shop_workflow {
INSTANTIATE_TYPED_TEST_SUITE_P(postgres, payment_deadlines, cleave::testing::postgres_backend);
}  // namespace shop_workflow
