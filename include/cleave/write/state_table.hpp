#pragma once
// State-based aggregates with a version column: load the current state, change it, save it back
// only if nobody saved in between (optimistic concurrency). The state is kept as JSON in a table
// of its own, so any CLEAVE_RECORD can be an aggregate without a schema per field.
//
//   struct cart { std::vector<line> lines; };  CLEAVE_RECORD(cart, lines)
//   const cleave::state_table<cart> carts{"carts"};
//   // a migration: {1, "carts", carts.create_sql()}
//   auto c = carts.load(tx, "cart-1");         // c.state, c.version (0: new)
//   c.state.lines.push_back(...);
//   carts.save(tx, "cart-1", c);               // errc::conflict if the version moved meanwhile

#include <cstdint>
#include <string>
#include <string_view>

#include <cleave/core/context.hpp>
#include <cleave/core/error.hpp>
#include <cleave/core/json.hpp>

namespace cleave {

namespace detail {
struct stored_state {
  std::int64_t version = 0;
  std::string state;
};
CLEAVE_RECORD(stored_state, version, state)
}  // namespace detail

template <class T>
struct versioned {
  T state{};
  std::uint64_t version = 0;  // 0 for an aggregate that was never saved
};

template <described T>
class state_table {
 public:
  // `table` must be a plain SQL identifier.
  explicit state_table(std::string table) : table_(std::move(table)) {
    load_sql_ = "select version, state from " + table_ + " where id = $1";
    insert_sql_ = "insert into " + table_ + "(id, version, state) values ($1, 1, $2)";
    update_sql_ = "update " + table_ +
                  " set version = version + 1, state = $3 where id = $1 and version = $2";
  }

  // The statement that creates the table, for a migration (the same on SQLite and PostgreSQL).
  std::string create_sql() const {
    return "create table " + table_ +
           "(id text primary key, version bigint not null, state text not null)";
  }

  // The aggregate's current state, or a new one (version 0, default state) when absent.
  versioned<T> load(const read_context& tx, std::string_view id) const {
    versioned<T> out;
    auto row = tx.one<detail::stored_state>(load_sql_, id);
    if (!row) return out;
    auto parsed = parse_json(row->state);
    auto state = parsed ? from_json<T>(*parsed, decode_mode::tolerant)
                        : result<T>(std::unexpected(parsed.error()));
    if (!state)
      throw error_exception({errc::internal,
                             table_ + " '" + std::string(id) +
                                 "': the stored state does not decode: " + state.error().message,
                             {}});
    out.state = std::move(*state);
    out.version = static_cast<std::uint64_t>(row->version);
    return out;
  }

  // Saves `v` if the stored version is still v.version; returns the new version. Throws an
  // error_exception with errc::conflict otherwise, which fails the command (and lets
  // cleave::retry_on_conflict run it again).
  std::uint64_t save(write_context& tx, std::string_view id, const versioned<T>& v) const {
    const std::string state = to_json(v.state).dump();
    if (v.version == 0) {
      tx.exec(insert_sql_, id, state);  // a unique violation (someone created it) is a conflict
      return 1;
    }
    if (tx.exec(update_sql_, id, static_cast<std::int64_t>(v.version), state) == 0)
      throw error_exception(
          {errc::conflict,
           table_ + " '" + std::string(id) + "' changed since version " + std::to_string(v.version),
           {}});
    return v.version + 1;
  }

 private:
  std::string table_, load_sql_, insert_sql_, update_sql_;
};

}  // namespace cleave
