#include <cleave/core/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shop {

enum class size { small, large };
CLEAVE_ENUM(size, small, large)

struct order_line {
  std::string product_id;
  std::int32_t quantity = 0;
  std::optional<std::string> note;
};
CLEAVE_RECORD(order_line, product_id, quantity, note)

struct place_order {
  std::string order_id;
  std::vector<order_line> lines;
  size box = size::small;
  bool gift = false;
  double tip = 0;
  std::uint16_t priority = 0;
  std::optional<std::int64_t> coupon;
};
CLEAVE_COMMAND(place_order, "shop.place_order", order_id, lines, box, gift, tip, priority, coupon)

struct order_placed {
  std::string order_id;
  std::int32_t total = 0;
  std::string channel = "web";
};
CLEAVE_EVENT(order_placed, "shop.order_placed", order_id, total, channel)

}  // namespace shop

namespace {

using cleave::errc;
using cleave::json;

json valid_order() {
  return json::parse(R"({"order_id": "o1", "lines": [{"product_id": "p1", "quantity": 2}],
                         "box": "large", "gift": true, "tip": 1.5, "priority": 3})");
}

// The single field error of a failed decode, as "path: message".
std::string only_problem(const json& j) {
  auto r = cleave::from_json<shop::place_order>(j);
  if (r) return "decoded";
  EXPECT_EQ(r.error().category, errc::validation);
  EXPECT_EQ(r.error().fields.size(), 1u) << r.error().describe();
  if (r.error().fields.empty()) return "no field errors";
  return r.error().fields[0].path + ": " + r.error().fields[0].message;
}

TEST(json_decode, reads_every_supported_member_kind) {
  auto r = cleave::from_json<shop::place_order>(valid_order());
  ASSERT_TRUE(r) << r.error().describe();
  EXPECT_EQ(r->order_id, "o1");
  ASSERT_EQ(r->lines.size(), 1u);
  EXPECT_EQ(r->lines[0].quantity, 2);
  EXPECT_FALSE(r->lines[0].note);
  EXPECT_EQ(r->box, shop::size::large);
  EXPECT_TRUE(r->gift);
  EXPECT_DOUBLE_EQ(r->tip, 1.5);
  EXPECT_EQ(r->priority, 3);
  EXPECT_FALSE(r->coupon);
}

TEST(json_decode, a_nul_in_a_string_is_refused_naming_the_member) {
  auto j = valid_order();
  j["lines"][0]["note"] = std::string("gift\0wrap", 9);
  EXPECT_EQ(only_problem(j), "lines[0].note: must not contain U+0000 (NUL)");
  auto r = cleave::from_json_text<shop::place_order>(
      R"({"order_id": "o\u0000", "lines": [], "box": "small", "gift": false, "tip": 0,
          "priority": 0})");
  ASSERT_FALSE(r);
  ASSERT_EQ(r.error().fields.size(), 1u);
  EXPECT_EQ(r.error().fields[0].path, "order_id");
  // Stored events decode as they were written.
  auto e = cleave::from_json_text<shop::order_placed>(R"({"order_id": "o\u00001", "total": 1})",
                                                      cleave::decode_mode::tolerant);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->order_id, std::string("o\0"
                                     "1",
                                     3));
}

TEST(json_decode, a_member_given_twice_is_refused_naming_it) {
  auto r = cleave::from_json_text<shop::place_order>(
      R"({"order_id": "o1", "lines": [{"product_id": "p1", "quantity": 1},
          {"product_id": "p2", "quantity": 1, "quantity": 9}], "box": "small", "gift": false,
          "tip": 0, "priority": 0})");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().category, errc::validation);
  ASSERT_EQ(r.error().fields.size(), 1u);
  EXPECT_EQ(r.error().fields[0].path, "lines[1].quantity");
  EXPECT_EQ(r.error().fields[0].message, "given more than once");
  auto top = cleave::from_json_text<shop::place_order>(
      R"({"order_id": "o1", "order_id": "o2", "lines": [], "box": "small", "gift": false,
          "tip": 0, "priority": 0})");
  ASSERT_FALSE(top);
  EXPECT_EQ(top.error().message, "order_id: given more than once");
  // The same name in different objects is no repetition.
  EXPECT_TRUE(cleave::parse_json_strict(R"({"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}]})"));
  // Stored events keep the last, as they always did.
  auto e = cleave::from_json_text<shop::order_placed>(
      R"({"order_id": "o1", "total": 1, "total": 2})", cleave::decode_mode::tolerant);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->total, 2);
}

TEST(json_decode, strict_parsing_bounds_the_nesting) {
  EXPECT_TRUE(cleave::parse_json_strict("[[[1]]]", 3));
  auto deep = cleave::parse_json_strict("[[[[1]]]]", 3);
  ASSERT_FALSE(deep);
  EXPECT_EQ(deep.error().message, "JSON nested deeper than 3 levels");
  EXPECT_FALSE(cleave::parse_json_strict("{\"a\": "));
}

TEST(json_decode, missing_required_member_is_named) {
  auto j = valid_order();
  j.erase("order_id");
  EXPECT_EQ(only_problem(j), "order_id: is required");
}

TEST(json_decode, missing_optional_member_is_fine_and_null_clears_it) {
  auto j = valid_order();
  j["coupon"] = nullptr;
  auto r = cleave::from_json<shop::place_order>(j);
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->coupon);
}

TEST(json_decode, null_for_a_required_member_is_an_error) {
  auto j = valid_order();
  j["order_id"] = nullptr;
  EXPECT_EQ(only_problem(j), "order_id: expected a string, got null");
}

TEST(json_decode, unknown_member_is_named) {
  auto j = valid_order();
  j["discount"] = 10;
  EXPECT_EQ(only_problem(j), "discount: unknown member");
}

TEST(json_decode, unknown_member_in_a_nested_record_has_its_path) {
  auto j = valid_order();
  j["lines"][0]["colour"] = "red";
  EXPECT_EQ(only_problem(j), "lines[0].colour: unknown member");
}

TEST(json_decode, fraction_for_an_integer_is_refused) {
  auto j = valid_order();
  j["lines"][0]["quantity"] = 2.5;
  EXPECT_EQ(only_problem(j), "lines[0].quantity: expected an integer, got a fraction");
}

TEST(json_decode, integral_valued_float_is_still_not_an_integer) {
  auto j = valid_order();
  j["priority"] = 2.0;
  EXPECT_EQ(only_problem(j), "priority: expected an integer, got a fraction");
}

TEST(json_decode, string_for_a_number_is_refused) {
  auto j = valid_order();
  j["lines"][0]["quantity"] = "2";
  EXPECT_EQ(only_problem(j), "lines[0].quantity: expected an integer, got a string");
  j = valid_order();
  j["tip"] = "1.5";
  EXPECT_EQ(only_problem(j), "tip: expected a number, got a string");
}

TEST(json_decode, out_of_range_integers_are_refused) {
  auto j = valid_order();
  j["lines"][0]["quantity"] = 3'000'000'000LL;
  EXPECT_EQ(only_problem(j), "lines[0].quantity: out of range (-2147483648..2147483647)");
  j = valid_order();
  j["priority"] = -1;
  EXPECT_EQ(only_problem(j), "priority: out of range (0..65535)");
  j = valid_order();
  j["priority"] = 70000;
  EXPECT_EQ(only_problem(j), "priority: out of range (0..65535)");
  j = valid_order();
  j["coupon"] = 18'446'744'073'709'551'615ULL;
  EXPECT_EQ(only_problem(j), "coupon: out of range (-9223372036854775808..9223372036854775807)");
}

TEST(json_decode, unknown_enum_value_lists_the_known_ones) {
  auto j = valid_order();
  j["box"] = "huge";
  EXPECT_EQ(only_problem(j), "box: unknown value 'huge'; expected one of 'small', 'large'");
}

TEST(json_decode, wrong_container_kinds_are_refused) {
  auto j = valid_order();
  j["lines"] = json::object();
  EXPECT_EQ(only_problem(j), "lines: expected an array, got an object");
  EXPECT_EQ(only_problem(json::array()), ": expected an object, got an array");
  j = valid_order();
  j["gift"] = 1;
  EXPECT_EQ(only_problem(j), "gift: expected a boolean, got an integer");
}

TEST(json_decode, every_problem_is_reported_at_once) {
  auto j = valid_order();
  j.erase("order_id");
  j["gift"] = "yes";
  j["extra"] = 1;
  auto r = cleave::from_json<shop::place_order>(j);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().fields.size(), 3u) << r.error().describe();
}

TEST(json_decode, malformed_text_says_where) {
  auto r = cleave::from_json_text<shop::place_order>(R"({"order_id": )");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().category, errc::validation);
  EXPECT_NE(r.error().message.find("malformed JSON at byte"), std::string::npos);
}

TEST(json_decode, a_number_too_large_for_a_double_is_malformed_not_a_crash) {
  auto r = cleave::from_json_text<shop::place_order>(R"([2,-4e55555526])");  // found by fuzzing
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().category, errc::validation);
}

TEST(json_decode, stored_events_decode_tolerantly) {
  // An old event: lacks `channel`, carries a member since removed.
  auto j = json::parse(R"({"order_id": "o9", "total": 5, "legacy_flag": true})");
  auto strict = cleave::from_json<shop::order_placed>(j);
  EXPECT_FALSE(strict);
  auto tolerant = cleave::from_json<shop::order_placed>(j, cleave::decode_mode::tolerant);
  ASSERT_TRUE(tolerant) << tolerant.error().describe();
  EXPECT_EQ(tolerant->order_id, "o9");
  EXPECT_EQ(tolerant->total, 5);
  EXPECT_EQ(tolerant->channel, "web");  // the member's default
}

TEST(json_decode, tolerance_does_not_convert_types) {
  auto j = json::parse(R"({"order_id": "o9", "total": "5"})");
  EXPECT_FALSE(cleave::from_json<shop::order_placed>(j, cleave::decode_mode::tolerant));
}

TEST(json_encode, round_trips_and_leaves_out_empty_optionals) {
  shop::place_order o{
      "o2", {{"p1", 1, "wrap it"}, {"p2", 4, std::nullopt}}, shop::size::large, false, 0.25, 9, 77};
  auto j = cleave::to_json(o);
  EXPECT_EQ(j["box"], "large");
  EXPECT_EQ(j["lines"][0]["note"], "wrap it");
  EXPECT_FALSE(j["lines"][1].contains("note"));
  auto back = cleave::from_json<shop::place_order>(j);
  ASSERT_TRUE(back) << back.error().describe();
  EXPECT_EQ(cleave::to_json(*back), j);
}

TEST(json_schema, describes_members_types_ranges_and_what_is_required) {
  auto s = cleave::json_schema<shop::place_order>();
  EXPECT_EQ(s["type"], "object");
  EXPECT_EQ(s["additionalProperties"], false);
  EXPECT_EQ(s["required"], (json{"order_id", "lines", "box", "gift", "tip", "priority"}));
  EXPECT_EQ(s["properties"]["priority"],
            (json{{"type", "integer"}, {"minimum", 0}, {"maximum", 65535}}));
  EXPECT_EQ(s["properties"]["box"], (json{{"type", "string"}, {"enum", {"small", "large"}}}));
  EXPECT_EQ(s["properties"]["lines"]["items"]["required"], (json{"product_id", "quantity"}));
  EXPECT_EQ(s["properties"]["coupon"]["type"], "integer");
}

TEST(message_traits, declarations_give_kind_names_and_fields) {
  static_assert(cleave::command<shop::place_order>);
  static_assert(cleave::event<shop::order_placed>);
  static_assert(!cleave::message<shop::order_line>);
  static_assert(cleave::described<shop::order_line>);
  EXPECT_EQ(cleave::info_of<shop::place_order>().wire_name, "shop.place_order");
  EXPECT_EQ(cleave::info_of<shop::place_order>().type_name, "place_order");
  std::vector<std::pair<std::string, bool>> fields;
  cleave::for_each_field<shop::order_line>([&](const auto& f) {
    using member = typename std::decay_t<decltype(f)>::value_type;
    fields.emplace_back(std::string(f.name), cleave::is_required_v<member>);
  });
  EXPECT_EQ(fields, (std::vector<std::pair<std::string, bool>>{
                        {"product_id", true}, {"quantity", true}, {"note", false}}));
  bool listed = false;
  for (const auto* info : cleave::declared_messages())
    listed = listed || info->wire_name == "shop.order_placed";
  EXPECT_TRUE(listed);
}

// from_json_text reads straight from the text when it can. Whatever that fast path accepts, the
// json-value path (parse, then from_json) must accept with the same value; what it gives up on
// goes to the json-value path, which says what is wrong.
namespace text_path {

struct wide {
  std::string name;
  std::vector<std::int8_t> small;
  std::map<std::string, std::uint32_t> counts;
  std::optional<double> ratio;
  float scale = 0;
  json extra;
};
CLEAVE_RECORD(wide, name, small, counts, ratio, scale, extra)

// What the fast path alone makes of `text`: the value's JSON, or nullopt when it gives up.
template <class T>
std::optional<json> fast(std::string_view text, cleave::decode_mode mode) {
  T out{};
  cleave::detail::text_reader reader(text, mode);
  if (!reader.read(out) || !reader.at_end()) return std::nullopt;
  return cleave::to_json(out);
}

template <class T>
std::optional<json> slow(std::string_view text, cleave::decode_mode mode) {
  auto j = cleave::parse_json(text);
  if (!j) return std::nullopt;
  auto v = cleave::from_json<T>(*j, mode);
  if (!v) return std::nullopt;
  return cleave::to_json(*v);
}

template <class T>
void agrees(std::string_view text, bool fast_should_take_it) {
  for (auto mode : {cleave::decode_mode::strict, cleave::decode_mode::tolerant}) {
    const auto f = fast<T>(text, mode);
    const auto s = slow<T>(text, mode);
    if (f) {
      ASSERT_TRUE(s) << "the fast path accepted what the json path refuses: " << text;
      EXPECT_EQ(*f, *s) << text;
    }
    if (fast_should_take_it && mode == cleave::decode_mode::tolerant) {
      EXPECT_TRUE(f) << "the fast path gave up on " << text;
    }
  }
}

TEST(json_text, fast_path_takes_common_documents) {
  agrees<shop::place_order>(valid_order().dump(), true);
  agrees<shop::place_order>(
      R"( { "order_id" : "o\u00e9\"\\\/\b\f\n\r\t\ud83d\ude00" , "lines" : [ ] , "box" : "small",
            "gift": false, "tip": -0, "priority": 65535, "coupon": null } )",
      true);
  agrees<shop::place_order>(
      R"({"order_id": "ö€😀", "lines": [{"product_id": "p", "quantity": -2147483648,
          "note": "n"}], "box": "large", "gift": true, "tip": 1e-3, "priority": 0,
          "coupon": -9223372036854775808})",
      true);
  agrees<shop::order_placed>(R"({"order_id": "o1", "total": 5, "ignored": {"a": [1, 2.5e3, null,
                                 true, "x"]}})",
                             true);
  agrees<text_path::wide>(R"({"name": "", "small": [-128, 127], "counts": {"a": 1, "b": 0},
                              "ratio": 12345678901234567890, "scale": 3.25,
                              "extra": {"k": [1, {"z": null}]}})",
                          true);
}

TEST(json_text, fast_path_gives_up_where_the_json_path_decides) {
  for (const char* text : {
           R"({"order_id": "o1", "order_id": "o2", "lines": [], "box": "small", "gift": true,
               "tip": 1, "priority": 1})",  // a repeated member: the last one wins there
           R"({"order_id": "o1", "lines": [], "box": "medium", "gift": true, "tip": 1,
               "priority": 1})",
           R"({"order_id": "o1", "lines": [], "box": "small", "gift": true, "tip": 1,
               "priority": 65536})",
           R"({"order_id": "o1", "lines": [], "box": "small", "gift": true, "tip": 1,
               "priority": 1.0})",
           R"({"order_id": "o1", "lines": [], "box": "small", "gift": true, "tip": 1e999,
               "priority": 1})",
           R"({"order_id": "\ud800", "lines": [], "box": "small", "gift": 1, "tip": 1,
               "priority": 1})",
           "{\"order_id\": \"\xff\", \"lines\": []}",
           "{\"order_id\": \"a\tb\"}",
           R"({"order_id": "o1"} x)",
           R"({"order_id": 01})",
           R"({"order_id": "o1",})",
           R"([1, 2])",
           "\xef\xbb\xbf{\"order_id\": \"o1\"}",
           R"({"order_id": "o1", "lines": [], "box": "small", "gift": true, "tip": 1,
               "priority": 1, "unknown": -})",
       }) {
    agrees<shop::place_order>(text, false);
    agrees<shop::order_placed>(text, false);
  }
  agrees<text_path::wide>(R"({"counts": {"a": 1, "a": 2}})", false);
  agrees<text_path::wide>(R"({"small": [128]})", false);
  agrees<text_path::wide>(R"({"scale": 1e39})", false);
  agrees<text_path::wide>(
      R"({"extra": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]})",
      true);
}

TEST(json_text, errors_still_name_the_member) {
  auto r = cleave::from_json_text<shop::place_order>(
      R"({"order_id": "o1", "lines": [{"product_id": "p1", "quantity": 2.5}], "box": "large",
          "gift": true, "tip": 1.5, "priority": 3})");
  ASSERT_FALSE(r);
  ASSERT_EQ(r.error().fields.size(), 1u);
  EXPECT_EQ(r.error().fields[0].path, "lines[0].quantity");
  EXPECT_EQ(r.error().fields[0].message, "expected an integer, got a fraction");
}

}  // namespace text_path

}  // namespace
