#pragma once
// Text substitution in SQL the framework builds from an application's statements ({view},
// {events}). Not for values: those are always bound parameters.

#include <string>
#include <string_view>

namespace cleave::detail {

// `sql` with every `placeholder` replaced by `text`.
std::string replace_all(std::string_view sql, std::string_view placeholder, std::string_view text);

}  // namespace cleave::detail
