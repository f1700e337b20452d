// The HTTP group commit suite (group_commit_suite.hpp) on SQLite.

#include "group_commit_suite.hpp"

std::string grouped_database(const cleave::testing::temp_dir& dir) {
  return dir.file("grouped.db");
}
