#include "write_styles_suite.hpp"

#include "postgres_backend.hpp"

namespace styles {
INSTANTIATE_TYPED_TEST_SUITE_P(postgres, write_styles, cleave::testing::postgres_backend);
}  // namespace styles
