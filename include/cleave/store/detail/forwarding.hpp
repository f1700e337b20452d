#pragma once
// A write transaction that passes every call to another one. Decorators (group commit, inline
// projections) derive from it and override only what they change.

#include <cleave/core/session.hpp>

namespace cleave::detail {

class forwarding_transaction : public write_transaction {
 public:
  void query(std::string_view sql, std::span<const sql_value> params,
             row_callback on_row) override {
    inner_->query(sql, params, on_row);
  }
  std::int64_t exec(std::string_view sql, std::span<const sql_value> params) override {
    return inner_->exec(sql, params);
  }
  void script(std::string_view sql) override { inner_->script(sql); }
  deferred defer(std::string_view sql, std::span<const sql_value> params) override {
    return inner_->defer(sql, params);
  }
  std::int64_t deferred_rows(std::uint64_t ticket) override {
    return inner_->deferred_rows(ticket);
  }
  std::uint64_t append(const pending_event& e) override { return inner_->append(e); }
  std::optional<remembered_outcome> remembered() override { return inner_->remembered(); }
  void remember(const remembered_outcome& o) override { inner_->remember(o); }
  void rebind(const request_meta& meta) override { inner_->rebind(meta); }
  position_token position_so_far() override { return inner_->position_so_far(); }
  bool holds_statements() const override { return inner_->holds_statements(); }
  std::uint64_t statement_mark() override { return inner_->statement_mark(); }
  std::optional<std::uint64_t> failed_statement() override { return inner_->failed_statement(); }
  position_token position_before(std::uint64_t mark) override {
    return inner_->position_before(mark);
  }

 protected:
  write_transaction* inner_ = nullptr;  // the transaction calls go to; set by the decorator
};

}  // namespace cleave::detail
