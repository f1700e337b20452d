#pragma once
// Test backends: each open() is another handle on one fresh database, as another process.

#include <chrono>
#include <memory>
#include <string>

#include <cleave/sqlite/store.hpp>

#include "temp_dir.hpp"

namespace cleave::testing {

struct sqlite_backend {
  temp_dir dir;
  static constexpr bool is_postgres = false;
  // What another process opens to reach the same database: a path or a URL.
  std::string location() const { return dir.file("var/app.db"); }
  std::unique_ptr<cleave::store> open(
      std::chrono::seconds retention = std::chrono::hours(24 * 7)) const {
    return std::make_unique<cleave::sqlite::store>(
        cleave::sqlite::options{.path = dir.file("var/app.db"), .outcome_retention = retention});
  }
};

}  // namespace cleave::testing
