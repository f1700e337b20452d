// Leases as session-level advisory locks, each on a connection of its own.

#include <utility>

#include "store_impl.hpp"

namespace cleave::postgres {

namespace {

using detail::connection;

// A session-level advisory lock, held by a connection of its own: PostgreSQL drops it when that
// connection ends, also when the process holding it is killed.
class advisory_lease final : public lease {
 public:
  explicit advisory_lease(std::unique_ptr<connection> conn) : conn_(std::move(conn)) {
    // A server that stops answering loses the lease rather than holding its caller.
    conn_->answer_within(std::chrono::milliseconds(2000));
  }
  // Unlocked before the connection closes: the server ends a closed connection's session (and
  // its locks) a moment later, and a holder taking the name again at once must find it free.
  ~advisory_lease() override {
    try {
      if (conn_->healthy()) conn_->script("select pg_advisory_unlock_all()");
    } catch (const error_exception&) {
      // The connection's end releases it.
    }
  }
  bool held() override {
    try {
      conn_->script("select 1");
      return true;
    } catch (const error_exception&) {
      return false;
    }
  }

 private:
  std::unique_ptr<connection> conn_;
};

}  // namespace

std::unique_ptr<lease> store::try_lease(std::string_view name) {
  auto conn = std::make_unique<connection>(options_.url);
  const sql_value key[] = {name};
  auto r = conn->run("select pg_try_advisory_lock(hashtext('cleave.lease'), hashtext($1))", key);
  if (r.text(0, 0) != "t") return nullptr;
  return std::make_unique<advisory_lease>(std::move(conn));
}

}  // namespace cleave::postgres
