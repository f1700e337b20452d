// The fast path of from_json_text: detail::text_reader reads JSON text straight into declared
// types and gives up on anything the json-value path (json.cpp) must judge.

#include <cleave/core/json.hpp>

#include <charconv>

namespace cleave::detail {

bool text_reader::literal(std::string_view word) {
  skip_space();
  if (static_cast<std::size_t>(end_ - p_) < word.size() ||
      std::string_view(p_, word.size()) != word)
    return false;
  p_ += word.size();
  return true;
}

namespace {

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void append_utf8(std::string& out, std::uint32_t code) {
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else if (code < 0x10000) {
    out += static_cast<char>(0xE0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code >> 18));
    out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
}

// The length of the well-formed UTF-8 sequence (RFC 3629) at p, or 0.
std::size_t utf8_length(const unsigned char* p, const unsigned char* end) {
  const auto in = [&](std::size_t i, unsigned lo, unsigned hi) {
    return p + i < end && p[i] >= lo && p[i] <= hi;
  };
  const unsigned c = p[0];
  if (c >= 0xC2 && c <= 0xDF) return in(1, 0x80, 0xBF) ? 2 : 0;
  if (c == 0xE0) return in(1, 0xA0, 0xBF) && in(2, 0x80, 0xBF) ? 3 : 0;
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
    return in(1, 0x80, 0xBF) && in(2, 0x80, 0xBF) ? 3 : 0;
  if (c == 0xED) return in(1, 0x80, 0x9F) && in(2, 0x80, 0xBF) ? 3 : 0;
  if (c == 0xF0) return in(1, 0x90, 0xBF) && in(2, 0x80, 0xBF) && in(3, 0x80, 0xBF) ? 4 : 0;
  if (c >= 0xF1 && c <= 0xF3)
    return in(1, 0x80, 0xBF) && in(2, 0x80, 0xBF) && in(3, 0x80, 0xBF) ? 4 : 0;
  if (c == 0xF4) return in(1, 0x80, 0x8F) && in(2, 0x80, 0xBF) && in(3, 0x80, 0xBF) ? 4 : 0;
  return 0;
}

}  // namespace

bool text_reader::string(std::string_view& out, std::string& scratch) {
  if (!consume('"')) return false;
  const char* start = p_;
  // The common case: no escapes, no control characters; multi-byte UTF-8 is checked.
  while (p_ != end_) {
    const auto c = static_cast<unsigned char>(*p_);
    if (c == '"') {
      out = std::string_view(start, static_cast<std::size_t>(p_ - start));
      ++p_;
      return true;
    }
    if (c == '\\') break;
    if (c < 0x20) return false;
    if (c < 0x80) {
      ++p_;
    } else {
      const auto n = utf8_length(reinterpret_cast<const unsigned char*>(p_),
                                 reinterpret_cast<const unsigned char*>(end_));
      if (n == 0) return false;
      p_ += n;
    }
  }
  if (p_ == end_) return false;
  // Escapes: decoded into scratch.
  scratch.assign(start, p_);
  auto hex4 = [&](std::uint32_t& code) {
    if (end_ - p_ < 4) return false;
    code = 0;
    for (int i = 0; i < 4; ++i) {
      const int d = hex_digit(p_[i]);
      if (d < 0) return false;
      code = code * 16 + static_cast<std::uint32_t>(d);
    }
    p_ += 4;
    return true;
  };
  while (p_ != end_) {
    const auto c = static_cast<unsigned char>(*p_);
    if (c == '"') {
      ++p_;
      out = scratch;
      return true;
    }
    if (c < 0x20) return false;
    if (c >= 0x80) {
      const auto n = utf8_length(reinterpret_cast<const unsigned char*>(p_),
                                 reinterpret_cast<const unsigned char*>(end_));
      if (n == 0) return false;
      scratch.append(p_, n);
      p_ += n;
      continue;
    }
    ++p_;
    if (c != '\\') {
      scratch += static_cast<char>(c);
      continue;
    }
    if (p_ == end_) return false;
    switch (*p_++) {
      case '"':
        scratch += '"';
        break;
      case '\\':
        scratch += '\\';
        break;
      case '/':
        scratch += '/';
        break;
      case 'b':
        scratch += '\b';
        break;
      case 'f':
        scratch += '\f';
        break;
      case 'n':
        scratch += '\n';
        break;
      case 'r':
        scratch += '\r';
        break;
      case 't':
        scratch += '\t';
        break;
      case 'u': {
        std::uint32_t code = 0;
        if (!hex4(code)) return false;
        if (code >= 0xDC00 && code <= 0xDFFF) return false;  // a lone low surrogate
        if (code >= 0xD800 && code <= 0xDBFF) {
          std::uint32_t low = 0;
          if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') return false;
          p_ += 2;
          if (!hex4(low) || low < 0xDC00 || low > 0xDFFF) return false;
          code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
        }
        append_utf8(scratch, code);
        break;
      }
      default:
        return false;
    }
  }
  return false;
}

bool text_reader::string(std::string& out) {
  std::string scratch;
  std::string_view view;
  if (!string(view, scratch)) return false;
  if (view.data() == scratch.data())
    out = std::move(scratch);
  else
    out.assign(view);
  return true;
}

bool text_reader::number(std::string_view& token, bool& integral) {
  skip_space();
  const char* start = p_;
  const auto digit = [&] { return p_ != end_ && *p_ >= '0' && *p_ <= '9'; };
  if (p_ != end_ && *p_ == '-') ++p_;
  if (!digit()) return false;
  if (*p_ == '0') {
    ++p_;
  } else {
    while (digit()) ++p_;
  }
  integral = true;
  if (p_ != end_ && *p_ == '.') {
    integral = false;
    ++p_;
    if (!digit()) return false;
    while (digit()) ++p_;
  }
  if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
    integral = false;
    ++p_;
    if (p_ != end_ && (*p_ == '+' || *p_ == '-')) ++p_;
    if (!digit()) return false;
    while (digit()) ++p_;
  }
  token = std::string_view(start, static_cast<std::size_t>(p_ - start));
  return true;
}

// An integer token as the json path holds it: non-negative ones as unsigned 64-bit, negative
// ones as signed 64-bit; anything larger is a floating-point number there (so: give up).
bool text_reader::integer(std::int64_t& out, bool& negative, std::uint64_t& magnitude) {
  std::string_view token;
  bool integral = false;
  if (!number(token, integral) || !integral) return false;
  negative = token[0] == '-';
  if (negative) {
    auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), out);
    return ec == std::errc{} && end == token.data() + token.size();
  }
  auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), magnitude);
  return ec == std::errc{} && end == token.data() + token.size();
}

bool text_reader::floating(double& out) {
  skip_space();
  const char* start = p_;
  std::string_view token;
  bool integral = false;
  if (!number(token, integral)) return false;
  if (integral) {  // as the json path does: a 64-bit integer when it fits, then converted
    p_ = start;
    std::int64_t signed_value = 0;
    std::uint64_t magnitude = 0;
    bool negative = false;
    if (integer(signed_value, negative, magnitude)) {
      out = negative ? static_cast<double>(signed_value) : static_cast<double>(magnitude);
      return true;
    }
    p_ = token.data() + token.size();
  }
  return finite_double(token, out);
}

// The token as a double; false beyond a double's range (the json path refuses those, or in the
// case of underflow reads them as it likes).
bool text_reader::finite_double(std::string_view token, double& out) {
  auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), out);
  return ec == std::errc{} && end == token.data() + token.size();
}

bool text_reader::skip_value(int depth) {
  if (depth > 200) return false;  // deeper nesting: the json path copes
  skip_space();
  if (p_ == end_) return false;
  switch (*p_) {
    case '"': {
      std::string scratch;
      std::string_view ignored;
      return string(ignored, scratch);
    }
    case '{':
      ++p_;
      if (consume('}')) return true;
      do {
        std::string scratch;
        std::string_view ignored;
        if (!string(ignored, scratch) || !consume(':') || !skip_value(depth + 1)) return false;
      } while (consume(','));
      return consume('}');
    case '[':
      ++p_;
      if (consume(']')) return true;
      do {
        if (!skip_value(depth + 1)) return false;
      } while (consume(','));
      return consume(']');
    case 't':
      return literal("true");
    case 'f':
      return literal("false");
    case 'n':
      return literal("null");
    default: {
      std::string_view token;
      bool integral = false;
      double ignored = 0;
      return number(token, integral) && finite_double(token, ignored);
    }
  }
}

bool text_reader::read_record(void* out, std::span<const field_codec> fields) {
  if (!consume('{')) return false;
  std::uint64_t seen = 0;
  if (fields.size() > 64) return false;  // the json path reads records this wide
  if (!consume('}')) {
    do {
      std::string scratch;
      std::string_view key;
      if (!string(key, scratch) || !consume(':')) return false;
      std::size_t i = 0;
      while (i < fields.size() && fields[i].name != key) ++i;
      if (i == fields.size()) {
        if (mode_ == decode_mode::strict || !skip_value()) return false;
        continue;
      }
      const auto bit = std::uint64_t{1} << i;
      if (seen & bit) return false;  // a repeated member: the json path decides
      seen |= bit;
      if (!fields[i].read_text(*this, out)) return false;
    } while (consume(','));
    if (!consume('}')) return false;
  }
  if (mode_ == decode_mode::strict)
    for (std::size_t i = 0; i < fields.size(); ++i)
      if (fields[i].required && !(seen & (std::uint64_t{1} << i))) return false;
  return true;
}

}  // namespace cleave::detail
