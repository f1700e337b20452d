#pragma once
// JSON for declared messages and records (nlohmann-json).
//
// Commands and queries decode strictly: an unknown member, a missing required member, a fraction
// or a string where an integer belongs, an out-of-range number, an unknown enum name or a string
// holding U+0000 (NUL, which databases cut off or refuse) is a validation error naming the
// member's JSON path; nothing is converted silently. Text decoded strictly (from_json_text,
// parse_json_strict) also refuses a member given twice in one object. Stored events decode
// tolerantly: missing members keep their defaults and unknown members are ignored.

#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cleave/core/error.hpp>
#include <cleave/core/message.hpp>

namespace cleave {

using json = nlohmann::json;

enum class decode_mode { strict, tolerant };

// Parses text as JSON; malformed text is a validation error that says where it broke. A member
// given twice in one object keeps the last value.
result<json> parse_json(std::string_view text);

// Parses text as JSON for strict decoding (commands, queries, request bodies): as parse_json, and
// a member given twice in one object is a validation error naming its path (`lines[0].sku`), and
// nesting deeper than max_depth levels (0: no limit) is one too.
result<json> parse_json_strict(std::string_view text, int max_depth = 0);

// Encodes a value of any type from_json accepts; an empty optional member is left out.
template <class T>
json to_json(const T& value);

}  // namespace cleave

// The decoder's internals: from_json and to_json below are written with them.
#include <cleave/core/detail/json_decode.hpp>

namespace cleave {

// Decodes a declared message or record from a JSON value. Every problem found is reported, as a
// validation error whose fields name each member's path.
template <described T>
result<T> from_json(const json& j, decode_mode mode = decode_mode::strict) {
  T out{};
  detail::json_decoder decoder(mode);
  decoder.read(j, out);
  if (!decoder.ok()) return std::unexpected(decoder.take_error());
  return out;
}

// Parses and decodes in one step.
template <described T>
result<T> from_json_text(std::string_view text, decode_mode mode = decode_mode::strict) {
  {
    T out{};
    detail::text_reader fast(text, mode);
    if (fast.read(out) && fast.at_end()) return out;
  }
  auto j = mode == decode_mode::strict ? parse_json_strict(text) : parse_json(text);
  if (!j) return std::unexpected(std::move(j.error()));
  return from_json<T>(*j, mode);
}

// to_json, declared above.
template <class T>
json to_json(const T& value) {
  if constexpr (described_enum<T>) {
    return json(enum_name(value));
  } else if constexpr (is_optional<T>::value) {
    return value ? to_json(*value) : json(nullptr);
  } else if constexpr (detail::is_vector<T>::value) {
    json out = json::array();
    for (const auto& v : value) out.push_back(to_json(v));
    return out;
  } else if constexpr (detail::is_string_map<T>::value) {
    json out = json::object();
    for (const auto& [k, v] : value) out[k] = to_json(v);
    return out;
  } else if constexpr (described<T>) {
    json out = json::object();
    for (const auto& f : detail::codecs_of<T>()) f.write(out, &value);
    return out;
  } else {
    return json(value);
  }
}

// The JSON Schema (2020-12, as OpenAPI 3.1 uses) of any type from_json accepts: records are
// closed objects listing their required members; integers carry their range; enums their names.
template <class T>
json json_schema() {
  if constexpr (std::is_void_v<T>) {
    return json{{"type", "null"}};
  } else if constexpr (std::is_same_v<T, bool>) {
    return json{{"type", "boolean"}};
  } else if constexpr (std::is_integral_v<T>) {
    return json{{"type", "integer"},
                {"minimum", std::numeric_limits<T>::min()},
                {"maximum", std::numeric_limits<T>::max()}};
  } else if constexpr (std::is_floating_point_v<T>) {
    return json{{"type", "number"}};
  } else if constexpr (std::is_same_v<T, std::string>) {
    return json{{"type", "string"}};
  } else if constexpr (std::is_same_v<T, json>) {
    return json::object();
  } else if constexpr (described_enum<T>) {
    json names = json::array();
    for (const auto& [value, name] : enum_values<T>()) names.push_back(name);
    return json{{"type", "string"}, {"enum", names}};
  } else if constexpr (is_optional<T>::value) {
    return json_schema<typename T::value_type>();
  } else if constexpr (detail::is_vector<T>::value) {
    return json{{"type", "array"}, {"items", json_schema<typename T::value_type>()}};
  } else if constexpr (detail::is_string_map<T>::value) {
    return json{{"type", "object"},
                {"additionalProperties", json_schema<typename T::mapped_type>()}};
  } else {
    static_assert(described<T>, "json_schema<T>: T must be a type from_json accepts");
    json properties = json::object(), required = json::array();
    for_each_field<T>([&](const auto& f) {
      using member_t = typename std::decay_t<decltype(f)>::value_type;
      properties[std::string(f.name)] = json_schema<member_t>();
      if (is_required_v<member_t>) required.push_back(std::string(f.name));
    });
    return json{{"type", "object"},
                {"properties", std::move(properties)},
                {"required", std::move(required)},
                {"additionalProperties", false}};
  }
}

}  // namespace cleave
