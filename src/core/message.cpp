#include <cleave/core/message.hpp>

namespace cleave {

std::string_view to_string(message_kind kind) noexcept {
  switch (kind) {
    case message_kind::command:
      return "command";
    case message_kind::query:
      return "query";
    case message_kind::event:
      return "event";
    case message_kind::record:
      return "record";
  }
  return "record";
}

namespace {
std::vector<const message_info*>& registry() {
  static std::vector<const message_info*> all;
  return all;
}
}  // namespace

const std::vector<const message_info*>& declared_messages() {
  return registry();
}

void detail::declare_message(const message_info& info) {
  registry().push_back(&info);
}

}  // namespace cleave
