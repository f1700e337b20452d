#pragma once
// Position tokens: where a command's effects sit in the event log.

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

#include <cleave/core/error.hpp>

namespace cleave {

// Where a command's writes sit in the log, returned by send() and passed back by a read that
// must see them (read-your-writes). Callers treat it as opaque and carry its text form; the
// backend that made it fills the parts it needs: SQLite the log position; PostgreSQL the writing
// transaction's id (xid8), the position and the commit LSN (for replicas). Tokens of one store
// compare in the order its log is read: by (transaction, position). Trivially copyable, 24 bytes.
class position_token {
 public:
  position_token() = default;  // the empty token: nothing was written
  constexpr position_token(std::uint64_t transaction, std::uint64_t position,
                           std::uint64_t lsn = 0) noexcept
      : transaction_(transaction), position_(position), lsn_(lsn) {}

  constexpr bool empty() const noexcept { return transaction_ == 0 && position_ == 0; }
  constexpr std::uint64_t transaction() const noexcept { return transaction_; }
  constexpr std::uint64_t position() const noexcept { return position_; }
  constexpr std::uint64_t lsn() const noexcept { return lsn_; }

  // The text form carried by HTTP headers and CLIs: "" for the empty token, else
  // "<transaction>.<position>.<lsn>" in lower-case hex.
  std::string to_string() const;
  // Reads the text form; anything else is a validation error.
  static result<position_token> parse(std::string_view text);

  friend constexpr bool operator==(const position_token& a, const position_token& b) noexcept {
    return a.transaction_ == b.transaction_ && a.position_ == b.position_;
  }
  friend constexpr std::strong_ordering operator<=>(const position_token& a,
                                                    const position_token& b) noexcept {
    if (auto c = a.transaction_ <=> b.transaction_; std::is_neq(c)) return c;
    return a.position_ <=> b.position_;
  }

 private:
  std::uint64_t transaction_ = 0;
  std::uint64_t position_ = 0;
  std::uint64_t lsn_ = 0;
};

}  // namespace cleave
