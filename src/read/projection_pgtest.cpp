#include "projection_suite.hpp"

#include "postgres_backend.hpp"

namespace views {
INSTANTIATE_TYPED_TEST_SUITE_P(postgres, projections, cleave::testing::postgres_backend);
}  // namespace views
