#pragma once
// The internals of <cleave/core/json.hpp>, which includes this header after declaring `json`,
// `decode_mode`, `parse_json_strict` and `to_json`; include that header, not this one.
//
// Decoding has two paths with the same result: json_decoder walks a parsed json value and names
// every problem by its member path; text_reader reads JSON text straight into declared types and
// gives up (false) on anything unusual, so that the caller takes the json-value path. Each record
// type gets a table of field_codec entries (codecs_of<T>) that both paths and to_json use.

#include <array>
#include <cstdint>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cleave/core/error.hpp>
#include <cleave/core/message.hpp>

namespace cleave::detail {

template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};
template <class T>
struct is_string_map : std::false_type {};
template <class T>
struct is_string_map<std::map<std::string, T>> : std::true_type {};

std::string_view json_type_name(const json& j) noexcept;

// Whether a string anywhere in `j`, or a member's name, holds U+0000.
bool nul_in_json(const json& j);
inline bool nul_in_text(std::string_view s) noexcept {
  return s.find('\0') != std::string_view::npos;
}

class json_decoder;
class text_reader;

// How one declared member is read and written; a table of these per record type keeps the
// per-type code small (the walking itself is shared, in src/core/json.cpp and
// json_text_reader.cpp).
struct field_codec {
  std::string_view name;
  bool required;
  void (*read)(json_decoder& decoder, const json& value, void* owner);
  void (*write)(json& out, const void* owner);  // adds the member to `out` (skips empty optionals)
  bool (*read_text)(text_reader& reader, void* owner);  // straight from text; false: give up
};

template <class T>
std::span<const field_codec> codecs_of();

// out[name] = value, out of line: it is the bulk of every record's encoder.
void put_member(json& out, std::string_view name, json&& value);

// Collects field problems while walking a JSON value; the path is built as it descends.
class json_decoder {
 public:
  explicit json_decoder(decode_mode mode) : mode_(mode) {}

  template <class T>
  void read(const json& j, T& out);
  void read_record(const json& j, void* out, std::span<const field_codec> fields);

  bool ok() const { return errors_.empty(); }
  std::vector<field_error> take_errors() { return std::move(errors_); }
  // The problems found, as one validation error.
  error take_error();

 private:
  void fail(std::string message) { errors_.push_back(field_error{path_, std::move(message)}); }
  void expected(std::string_view what, const json& j) {
    fail(fmt::format("expected {}, got {}", what, json_type_name(j)));
  }
  bool refuses_nul() const noexcept { return mode_ == decode_mode::strict; }
  void nul() { fail("must not contain U+0000 (NUL)"); }
  template <class T>
  void read_integer(const json& j, T& out);

  std::string path_;
  std::vector<field_error> errors_;
  decode_mode mode_;
};

// Reads JSON text straight into declared types, without building a json value: the fast path of
// from_json_text (a stored event's payload, a command's body). It accepts only what parsing and
// then from_json accept, with the same result; on anything else — malformed text, a wrong type,
// a duplicate member, a rare form — it gives up (false), and the caller takes the json-value path,
// which also says what was wrong.
class text_reader {
 public:
  text_reader(std::string_view text, decode_mode mode)
      : p_(text.data()), end_(text.data() + text.size()), mode_(mode) {}

  template <class T>
  bool read(T& out);
  bool read_record(void* out, std::span<const field_codec> fields);
  // Only whitespace is left.
  bool at_end() {
    skip_space();
    return p_ == end_;
  }

 private:
  void skip_space() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  bool next_is(char c) {
    skip_space();
    return p_ != end_ && *p_ == c;
  }
  bool consume(char c) {
    if (!next_is(c)) return false;
    ++p_;
    return true;
  }
  bool literal(std::string_view word);
  // A string's contents; `scratch` holds it when it had escapes, else the view points into the
  // text.
  bool string(std::string_view& out, std::string& scratch);
  bool string(std::string& out);
  // A number's text, checked against JSON's grammar; `integral` when it has no fraction or
  // exponent.
  bool number(std::string_view& token, bool& integral);
  bool integer(std::int64_t& out, bool& negative, std::uint64_t& magnitude);
  bool floating(double& out);
  static bool finite_double(std::string_view token, double& out);
  bool skip_value(int depth = 0);

  template <class T>
  bool read_integer(T& out);

  const char* p_;
  const char* end_;
  decode_mode mode_;
};

template <class T>
bool text_reader::read_integer(T& out) {
  std::int64_t signed_value = 0;
  std::uint64_t magnitude = 0;
  bool negative = false;
  if (!integer(signed_value, negative, magnitude)) return false;
  using limits = std::numeric_limits<T>;
  if (negative) {
    if constexpr (std::is_unsigned_v<T>) {
      if (signed_value != 0) return false;
    } else {
      if (signed_value < static_cast<std::int64_t>(limits::min())) return false;
    }
    out = static_cast<T>(signed_value);
  } else {
    if (magnitude > static_cast<std::uint64_t>(limits::max())) return false;
    out = static_cast<T>(magnitude);
  }
  return true;
}

template <class T>
bool text_reader::read(T& out) {
  if constexpr (std::is_same_v<T, bool>) {
    if (next_is('t')) return literal("true") && (out = true, true);
    return literal("false") && (out = false, true);
  } else if constexpr (std::is_integral_v<T>) {
    return read_integer(out);
  } else if constexpr (std::is_floating_point_v<T>) {
    double v = 0;
    if (!floating(v)) return false;
    if constexpr (sizeof(T) < sizeof(double)) {
      if (v > static_cast<double>(std::numeric_limits<T>::max()) ||
          v < static_cast<double>(std::numeric_limits<T>::lowest()))
        return false;
    }
    out = static_cast<T>(v);
    return true;
  } else if constexpr (std::is_same_v<T, std::string>) {
    return string(out) && !(mode_ == decode_mode::strict && nul_in_text(out));
  } else if constexpr (std::is_same_v<T, json>) {
    skip_space();
    const char* start = p_;
    if (!skip_value()) return false;
    if (mode_ == decode_mode::strict) {
      auto parsed =
          parse_json_strict(std::string_view(start, static_cast<std::size_t>(p_ - start)));
      if (!parsed || nul_in_json(*parsed)) return false;
      out = std::move(*parsed);
      return true;
    }
    try {
      out = json::parse(start, p_);
    } catch (const json::exception&) {
      return false;
    }
    return true;
  } else if constexpr (described_enum<T>) {
    std::string scratch;
    std::string_view name;
    if (!string(name, scratch)) return false;
    for (const auto& [value, each] : enum_values<T>()) {
      if (each == name) {
        out = value;
        return true;
      }
    }
    return false;
  } else if constexpr (is_optional<T>::value) {
    if (next_is('n')) {
      out.reset();
      return literal("null");
    }
    return read(out.emplace());
  } else if constexpr (is_vector<T>::value) {
    if (!consume('[')) return false;
    out.clear();
    if (consume(']')) return true;
    do {
      if (!read(out.emplace_back())) return false;
    } while (consume(','));
    return consume(']');
  } else if constexpr (is_string_map<T>::value) {
    if (!consume('{')) return false;
    out.clear();
    if (consume('}')) return true;
    do {
      std::string key;
      if (!string(key) || !consume(':')) return false;
      if (mode_ == decode_mode::strict && nul_in_text(key)) return false;
      auto [at, fresh] = out.try_emplace(std::move(key));
      if (!fresh || !read(at->second)) return false;  // a repeated key: the json path decides
    } while (consume(','));
    return consume('}');
  } else if constexpr (described<T>) {
    return read_record(&out, codecs_of<T>());
  } else {
    static_assert(detail::always_false<T>, "cleave cannot decode this member type from JSON");
  }
}

template <class T>
void json_decoder::read_integer(const json& j, T& out) {
  using limits = std::numeric_limits<T>;
  auto out_of_range = [&] {
    fail(fmt::format("out of range ({}..{})", +limits::min(), +limits::max()));
  };
  if (j.is_number_unsigned()) {
    auto v = j.get<std::uint64_t>();
    if (v > static_cast<std::uint64_t>(limits::max())) return out_of_range();
    out = static_cast<T>(v);
  } else if (j.is_number_integer()) {
    auto v = j.get<std::int64_t>();
    if constexpr (std::is_unsigned_v<T>) {
      if (v < 0) return out_of_range();
      if (static_cast<std::uint64_t>(v) > static_cast<std::uint64_t>(limits::max()))
        return out_of_range();
    } else {
      if (v < static_cast<std::int64_t>(limits::min()) ||
          v > static_cast<std::int64_t>(limits::max()))
        return out_of_range();
    }
    out = static_cast<T>(v);
  } else if (j.is_number_float()) {
    fail("expected an integer, got a fraction");
  } else {
    expected("an integer", j);
  }
}

template <class T>
void json_decoder::read(const json& j, T& out) {
  if constexpr (std::is_same_v<T, bool>) {
    if (!j.is_boolean()) return expected("a boolean", j);
    out = j.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    read_integer(j, out);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!j.is_number()) return expected("a number", j);
    auto v = j.get<double>();
    if constexpr (sizeof(T) < sizeof(double)) {
      if (v > static_cast<double>(std::numeric_limits<T>::max()) ||
          v < static_cast<double>(std::numeric_limits<T>::lowest()))
        return fail("out of range");
    }
    out = static_cast<T>(v);
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!j.is_string()) return expected("a string", j);
    out = j.get_ref<const std::string&>();
    if (refuses_nul() && nul_in_text(out)) nul();
  } else if constexpr (std::is_same_v<T, json>) {
    out = j;
    if (refuses_nul() && nul_in_json(j)) nul();
  } else if constexpr (described_enum<T>) {
    if (!j.is_string()) return expected("a string", j);
    const auto& s = j.get_ref<const std::string&>();
    for (const auto& [value, name] : enum_values<T>()) {
      if (name == s) {
        out = value;
        return;
      }
    }
    std::string names;
    for (const auto& [value, name] : enum_values<T>())
      names += fmt::format("{}'{}'", names.empty() ? "" : ", ", name);
    fail(fmt::format("unknown value '{}'; expected one of {}", s, names));
  } else if constexpr (is_optional<T>::value) {
    if (j.is_null()) {
      out.reset();
      return;
    }
    read(j, out.emplace());
  } else if constexpr (is_vector<T>::value) {
    if (!j.is_array()) return expected("an array", j);
    out.clear();
    out.resize(j.size());
    const auto base = path_.size();
    for (std::size_t i = 0; i < j.size(); ++i) {
      path_ += fmt::format("[{}]", i);
      read(j[i], out[i]);
      path_.resize(base);
    }
  } else if constexpr (is_string_map<T>::value) {
    if (!j.is_object()) return expected("an object", j);
    out.clear();
    const auto base = path_.size();
    for (const auto& [key, value] : j.items()) {
      if (refuses_nul() && nul_in_text(key)) {
        fail("a member name must not contain U+0000 (NUL)");
        continue;
      }
      path_ += base == 0 ? key : "." + key;
      read(value, out[key]);
      path_.resize(base);
    }
  } else if constexpr (described<T>) {
    read_record(j, &out, codecs_of<T>());
  } else {
    static_assert(detail::always_false<T>,
                  "cleave cannot decode this member type from JSON: use bool, integers, floating "
                  "point, std::string, std::optional, std::vector, std::map<std::string, T>, "
                  "cleave::json, a CLEAVE_ENUM enum or a CLEAVE_RECORD struct");
  }
}

template <class T, std::size_t I>
constexpr const auto& field_at() {
  return std::get<I>(describe_static<T>.fields);
}

template <class T, std::size_t I>
void read_field(json_decoder& decoder, const json& value, void* owner) {
  decoder.read(value, static_cast<T*>(owner)->*(field_at<T, I>().member));
}

template <class T, std::size_t I>
bool read_field_text(text_reader& reader, void* owner) {
  return reader.read(static_cast<T*>(owner)->*(field_at<T, I>().member));
}

template <class T, std::size_t I>
void write_field(json& out, const void* owner) {
  const auto& f = field_at<T, I>();
  const auto& member = static_cast<const T*>(owner)->*(f.member);
  if constexpr (is_optional<std::decay_t<decltype(member)>>::value) {
    if (!member) return;
  }
  put_member(out, f.name, to_json(member));
}

template <class T, std::size_t... I>
constexpr std::array<field_codec, sizeof...(I)> make_codecs(std::index_sequence<I...>) {
  return {field_codec{field_at<T, I>().name,
                      is_required_v<typename std::decay_t<decltype(field_at<T, I>())>::value_type>,
                      &read_field<T, I>, &write_field<T, I>, &read_field_text<T, I>}...};
}

template <class T>
std::span<const field_codec> codecs_of() {
  static constexpr auto table = make_codecs<T>(
      std::make_index_sequence<std::tuple_size_v<decltype(describe_static<T>.fields)>>{});
  return table;
}

}  // namespace cleave::detail
