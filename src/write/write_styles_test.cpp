#include "write_styles_suite.hpp"

#include "sqlite_backend.hpp"

namespace styles {
INSTANTIATE_TYPED_TEST_SUITE_P(sqlite, write_styles, cleave::testing::sqlite_backend);
}  // namespace styles
