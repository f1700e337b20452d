#include <cleave/core/json.hpp>

#include <functional>
#include <set>
#include <vector>

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

namespace {

struct nested_too_deep {};
struct repeated_member {
  std::string path;
};

// Where the parser is, for naming a repeated member: one frame per open object or array.
class member_tracker {
 public:
  explicit member_tracker(int max_depth) : max_depth_(max_depth) {}

  bool operator()(int depth, json::parse_event_t event, json& parsed) {
    using e = json::parse_event_t;
    if (max_depth_ > 0 && depth > max_depth_) throw nested_too_deep{};
    switch (event) {
      case e::object_start:
      case e::array_start:
        element_begins();
        frames_.push_back({event == e::object_start, {}, {}, 0});
        break;
      case e::object_end:
      case e::array_end:
        frames_.pop_back();
        break;
      case e::value:
        element_begins();
        break;
      case e::key: {
        auto& top = frames_.back();
        top.key = parsed.get<std::string>();
        if (!top.keys.insert(top.key).second) throw repeated_member{path()};
        break;
      }
    }
    return true;
  }

 private:
  struct frame {
    bool object;
    std::set<std::string, std::less<>> keys;
    std::string key;    // the member being read (objects)
    std::size_t count;  // elements begun so far (arrays)
  };
  void element_begins() {
    if (!frames_.empty() && !frames_.back().object) ++frames_.back().count;
  }
  // As json_decoder names members: `lines[0].sku`.
  std::string path() const {
    std::string out;
    for (const auto& f : frames_) {
      if (f.object) {
        if (!out.empty()) out += '.';
        out += f.key;
      } else {
        out += fmt::format("[{}]", f.count - 1);
      }
    }
    return out;
  }

  int max_depth_;
  std::vector<frame> frames_;
};

}  // namespace

result<json> parse_json_strict(std::string_view text, int max_depth) {
  member_tracker tracker(max_depth);
  try {
    return json::parse(text, std::ref(tracker));
  } catch (const nested_too_deep&) {
    return fail(errc::validation, fmt::format("JSON nested deeper than {} levels", max_depth));
  } catch (const repeated_member& r) {
    return invalid(r.path, "given more than once");
  } catch (const json::parse_error& e) {
    return fail(errc::validation, fmt::format("malformed JSON at byte {}", e.byte));
  } catch (const json::exception&) {
    return fail(errc::validation, "malformed JSON: a number is out of range");
  }
}

}  // namespace cleave

namespace cleave::detail {

bool nul_in_json(const json& j) {
  if (j.is_string()) return j.get_ref<const std::string&>().find('\0') != std::string::npos;
  if (j.is_object()) {
    for (const auto& [key, value] : j.items())
      if (key.find('\0') != std::string::npos || nul_in_json(value)) return true;
  } else if (j.is_array()) {
    for (const auto& value : j)
      if (nul_in_json(value)) return true;
  }
  return false;
}

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
