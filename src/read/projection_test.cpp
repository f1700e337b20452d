#include "projection_suite.hpp"

#include "sqlite_backend.hpp"

namespace views {
INSTANTIATE_TYPED_TEST_SUITE_P(sqlite, projections, cleave::testing::sqlite_backend);
}  // namespace views
