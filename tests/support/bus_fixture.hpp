#pragma once
// What the bus tests run on: a bank's messages and handler, and a session source that records
// what the buses do with it (no database).

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <gmock/gmock.h>

#include <cleave/core/bus.hpp>

namespace cleave::testing {

// A session source that records what the buses do with it; rows for queries come from `rows`.
class recording_source final : public cleave::session_source {
 public:
  struct row final : cleave::row_view {
    std::vector<std::pair<std::string, cleave::sql_value>> cells;
    std::size_t size() const override { return cells.size(); }
    cleave::sql_value get(std::size_t c) const override { return cells[c].second; }
    std::string_view column_name(std::size_t c) const override { return cells[c].first; }
  };

  struct tx final : cleave::write_transaction, cleave::read_transaction {
    recording_source* owner = nullptr;
    void query(std::string_view sql, std::span<const cleave::sql_value>,
               cleave::row_callback on_row) override {
      owner->log.push_back("query " + std::string(sql));
      for (const auto& r : owner->rows) on_row(r);
    }
    std::int64_t exec(std::string_view sql, std::span<const cleave::sql_value> params) override {
      owner->log.push_back("exec " + std::string(sql) + " with " + std::to_string(params.size()));
      return 1;
    }
    void script(std::string_view sql) override {
      owner->log.push_back("script " + std::string(sql));
    }
    std::uint64_t append(const cleave::pending_event& e) override {
      owner->log.push_back("append " + std::string(e.type) + " " + e.payload.dump());
      return 1;
    }
    cleave::position_token commit() override {
      owner->log.push_back("commit");
      if (owner->transient_commits > 0) {
        --owner->transient_commits;
        throw cleave::transient_error({cleave::errc::conflict, "a concurrent command won", {}});
      }
      return cleave::position_token(0, static_cast<std::uint64_t>(++owner->position));
    }
    void rollback() noexcept override { owner->log.push_back("rollback"); }
    std::optional<cleave::remembered_outcome> remembered() override { return std::nullopt; }
    void remember(const cleave::remembered_outcome&) override { owner->log.push_back("remember"); }
    void rebind(const cleave::request_meta&) override {}
    cleave::position_token position_so_far() override { return {}; }
    void finish() noexcept override { owner->log.push_back("finish"); }
  };

  cleave::write_transaction& begin_write(const cleave::request_meta&,
                                         cleave::isolation level) override {
    log.push_back("begin write");
    levels.push_back(level);
    return tx_;
  }
  cleave::read_transaction& begin_read(const cleave::request_meta&,
                                       const cleave::consistency&) override {
    log.push_back("begin read");
    return tx_;
  }

  std::vector<std::string> log;
  std::vector<row> rows;
  int position = 0;
  int transient_commits = 0;  // commits that fail as a serialization failure would
  std::vector<cleave::isolation> levels;

 private:
  tx tx_ = make_tx();
  tx make_tx() {
    tx t;
    t.owner = this;
    return t;
  }
};

}  // namespace cleave::testing

namespace bank {

struct open_account {
  std::string id;
  std::int64_t opening_balance = 0;
  using response = std::int64_t;  // the balance after opening
};
CLEAVE_COMMAND(open_account, "bank.open_account", id, opening_balance)

struct close_account {
  std::string id;
};
CLEAVE_COMMAND(close_account, "bank.close_account", id)

struct never_handled {
  std::string id;
};
CLEAVE_COMMAND(never_handled, "bank.never_handled", id)

struct account_opened {
  std::string id;
};
CLEAVE_EVENT(account_opened, "bank.account_opened", id)

struct account_view {
  std::string id;
  std::int64_t balance = 0;
};
CLEAVE_RECORD(account_view, id, balance)

struct account_by_id {
  std::string id;
  using response = account_view;
};
CLEAVE_QUERY(account_by_id, "bank.account_by_id", id)

struct count_accounts {
  using response = std::int64_t;
};
CLEAVE_QUERY(count_accounts, "bank.count_accounts")

// A command that opts down to read committed.
struct audit {
  std::string line;
  static constexpr auto isolation = cleave::isolation::read_committed;
};
CLEAVE_COMMAND(audit, "bank.audit", line)

// Opens an account: a state row and an event; a negative opening balance is rejected.
inline cleave::result<std::int64_t> open(const open_account& c, cleave::write_context& ctx) {
  if (c.opening_balance < 0) return cleave::rejected("an account cannot open overdrawn");
  ctx.exec("insert into accounts(id, balance) values ($1, $2)", c.id, c.opening_balance);
  ctx.emit(c.id, account_opened{c.id});
  return c.opening_balance;
}

}  // namespace bank

// The names the bus tests write unqualified (`using namespace bus_tests;`).
namespace bus_tests {
using bank::open;
using cleave::errc;
using cleave::json;
using cleave::testing::recording_source;
using ::testing::HasSubstr;
}  // namespace bus_tests
