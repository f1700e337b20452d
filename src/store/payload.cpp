#include <cleave/store/store.hpp>

#include <utility>

namespace cleave {

const json& event_payload::value() const {
  if (!parsed_) {
    auto parsed = parse_json(text_);
    if (!parsed) throw error_exception(parsed.error());
    value_ = std::move(*parsed);
    parsed_ = true;
  }
  return value_;
}

json& event_payload::value() {
  std::as_const(*this).value();
  text_.clear();
  text_.shrink_to_fit();
  return value_;
}

}  // namespace cleave
