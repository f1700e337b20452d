// libFuzzer target: any bytes as a JSON command body. Strict decoding must either refuse with a
// validation error that names members, or produce a value that encodes and decodes back to
// itself; the fast path straight from the text must agree with the json-value path; nothing may
// crash, leak or hit undefined behaviour.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <cleave/core/json.hpp>

namespace fuzz {
enum class box { small, large };
CLEAVE_ENUM(box, small, large)

struct line {
  std::string product_id;
  std::int32_t quantity = 0;
  std::optional<std::string> note;
};
CLEAVE_RECORD(line, product_id, quantity, note)

struct place_order {
  std::string order_id;
  std::vector<line> lines;
  box size = box::small;
  bool gift = false;
  double tip = 0;
  std::uint16_t priority = 0;
  std::optional<std::int64_t> coupon;
  std::map<std::string, std::int8_t> tags;
};
CLEAVE_COMMAND(place_order, "fuzz.place_order", order_id, lines, size, gift, tip, priority, coupon,
               tags)
}  // namespace fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (auto mode : {cleave::decode_mode::strict, cleave::decode_mode::tolerant}) {
    // What the fast path (straight from the text) accepts, the json-value path must accept with
    // the same value.
    fuzz::place_order fast{};
    cleave::detail::text_reader reader(text, mode);
    if (reader.read(fast) && reader.at_end()) {
      auto j = cleave::parse_json(text);
      if (!j) std::abort();
      auto slow = cleave::from_json<fuzz::place_order>(*j, mode);
      if (!slow || cleave::to_json(*slow) != cleave::to_json(fast)) std::abort();
    }
    auto decoded = cleave::from_json_text<fuzz::place_order>(text, mode);
    if (!decoded) {
      if (decoded.error().category != cleave::errc::validation) std::abort();
      continue;
    }
    const auto encoded = cleave::to_json(*decoded);
    auto again = cleave::from_json<fuzz::place_order>(encoded);
    if (!again || cleave::to_json(*again) != encoded) std::abort();  // the round trip must hold
  }
  return 0;
}
