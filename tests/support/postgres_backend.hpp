#pragma once
// Test backend: each open() is another handle on one fresh database, as another process.

#include <chrono>
#include <memory>
#include <string>

#include <cleave/postgres/store.hpp>

#include "pg_database.hpp"

namespace cleave::testing {

struct postgres_backend {
  pg_database database;
  static constexpr bool is_postgres = true;
  // What another process opens to reach the same database: a path or a URL.
  std::string location() const { return database.url(); }
  std::unique_ptr<cleave::store> open(
      std::chrono::seconds retention = std::chrono::hours(24 * 7)) const {
    return std::make_unique<cleave::postgres::store>(
        cleave::postgres::options{.url = database.url(), .outcome_retention = retention});
  }
};

}  // namespace cleave::testing
