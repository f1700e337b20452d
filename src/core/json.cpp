#include <cleave/core/json.hpp>

namespace cleave {

std::string_view detail::json_type_name(const json& j) noexcept {
  switch (j.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    case json::value_t::number_float:
      return "a number";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    default:
      return "an unsupported value";
  }
}

result<json> parse_json(std::string_view text) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    return fail(errc::validation, fmt::format("malformed JSON at byte {}", e.byte));
  } catch (const json::exception&) {  // a number too large for a double (found by fuzzing)
    return fail(errc::validation, "malformed JSON: a number is out of range");
  }
}

}  // namespace cleave

namespace cleave::detail {

void json_decoder::read_record(const json& j, void* out, std::span<const field_codec> fields) {
  if (!j.is_object()) return expected("an object", j);
  const auto base = path_.size();
  auto enter = [&](std::string_view name) {
    if (base != 0) path_ += '.';
    path_ += name;
  };
  std::size_t known = 0;
  for (const auto& f : fields) {
    enter(f.name);
    auto it = j.find(f.name);
    if (it != j.end()) {
      ++known;
      f.read(*this, *it, out);
    } else if (f.required && mode_ == decode_mode::strict) {
      fail("is required");
    }
    path_.resize(base);
  }
  if (mode_ == decode_mode::strict && known != j.size()) {
    for (const auto& [key, value] : j.items()) {
      bool declared = false;
      for (const auto& f : fields) declared = declared || f.name == key;
      if (!declared) {
        enter(key);
        fail("unknown member");
        path_.resize(base);
      }
    }
  }
}

void put_member(json& out, std::string_view name, json&& value) {
  out[std::string(name)] = std::move(value);
}

error json_decoder::take_error() {
  auto fields = take_errors();
  std::string message;
  if (fields.size() == 1)
    message =
        fields[0].path.empty() ? fields[0].message : fields[0].path + ": " + fields[0].message;
  else
    message = fmt::format("{} invalid members", fields.size());
  return error{errc::validation, std::move(message), std::move(fields)};
}

}  // namespace cleave::detail
