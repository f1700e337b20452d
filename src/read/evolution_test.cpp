#include "evolution_suite.hpp"

#include "sqlite_backend.hpp"

namespace evolution {
INSTANTIATE_TYPED_TEST_SUITE_P(sqlite, evolving, cleave::testing::sqlite_backend);
}  // namespace evolution
