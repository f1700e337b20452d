// The HTTP group commit suite (group_commit_suite.hpp) on PostgreSQL: several lanes, members
// whose statements are held, serialization failures the bus runs again.

#include <memory>
#include <vector>

#include "group_commit_suite.hpp"
#include "pg_database.hpp"

// A database of its own for each test, dropped at exit.
std::string grouped_database(const cleave::testing::temp_dir&) {
  static std::vector<std::unique_ptr<cleave::testing::pg_database>> databases;
  databases.push_back(std::make_unique<cleave::testing::pg_database>());
  return databases.back()->url();
}
