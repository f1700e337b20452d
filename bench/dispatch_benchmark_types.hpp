#pragma once
#include <cleave/core/bus.hpp>

namespace bench {
// Registers handlers for 999 distinct command types (in a translation unit of their own, so the
// compiler can work on it beside the rest of the benchmark).
void add_999_command_types(cleave::command_bus& commands);
}  // namespace bench
