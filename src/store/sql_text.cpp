#include <cleave/store/detail/sql_text.hpp>

namespace cleave::detail {

std::string replace_all(std::string_view sql, std::string_view placeholder, std::string_view text) {
  std::string out;
  out.reserve(sql.size() + text.size());
  for (std::size_t i = 0; i < sql.size();) {
    if (sql.compare(i, placeholder.size(), placeholder) == 0) {
      out += text;
      i += placeholder.size();
    } else {
      out += sql[i++];
    }
  }
  return out;
}

}  // namespace cleave::detail
