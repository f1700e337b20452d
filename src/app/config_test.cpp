// load_config(): the defaults, each member of a real configuration file, the errors a malformed
// or out-of-range file gets (naming the member), and the CLEAVE_* environment variables that
// override the file.

#include <cleave/app/app.hpp>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "temp_dir.hpp"

namespace {

using testing::HasSubstr;

constexpr const char* variables[] = {"CLEAVE_DATABASE", "CLEAVE_LISTEN", "CLEAVE_LOG_LEVEL",
                                     "CLEAVE_PROJECTOR", "CLEAVE_REPLICAS"};

struct load_config_test : testing::Test {
  cleave::testing::temp_dir dir;
  std::map<std::string, std::optional<std::string>> saved;

  load_config_test() {
    // Each test starts from an environment without the variables load_config reads.
    for (const char* name : variables) {
      const char* value = std::getenv(name);
      saved[name] = value ? std::optional<std::string>(value) : std::nullopt;
      ::unsetenv(name);
    }
  }
  ~load_config_test() override {
    for (const auto& [name, value] : saved) {
      if (value)
        ::setenv(name.c_str(), value->c_str(), 1);
      else
        ::unsetenv(name.c_str());
    }
  }

  std::filesystem::path file(const std::string& text) {
    const auto path = dir.path() / "app.json";
    std::ofstream(path) << text;
    return path;
  }
  // The error load_config gives for a file holding `text`.
  cleave::error error_for(const std::string& text) {
    auto c = cleave::load_config(file(text));
    if (c) {
      ADD_FAILURE() << "load_config accepted " << text;
      return {};
    }
    return c.error();
  }
};

TEST_F(load_config_test, a_missing_file_gives_the_defaults) {
  auto c = cleave::load_config(dir.path() / "absent.json");
  ASSERT_TRUE(c) << c.error().describe();
  EXPECT_EQ(c->database, "var/app.db");
  EXPECT_EQ(c->listen, "127.0.0.1:8080");
  EXPECT_EQ(c->max_body_bytes, 1u << 20);
  EXPECT_EQ(c->max_header_bytes, 16u << 10);
  EXPECT_EQ(c->max_json_depth, 64);
  EXPECT_EQ(c->max_connections, 1024u);
  EXPECT_EQ(c->idle_timeout, std::chrono::seconds(30));
  EXPECT_EQ(c->workers, 8u);
  EXPECT_EQ(c->request_timeout, std::chrono::milliseconds(5000));
  EXPECT_EQ(c->max_parked_reads, 4096u);
  EXPECT_TRUE(c->tokens.empty());
  EXPECT_TRUE(c->roles.empty());
  EXPECT_EQ(c->cli_principal.subject, "cli");
  EXPECT_EQ(c->log_level, "info");
  EXPECT_TRUE(c->run_projector);
  EXPECT_TRUE(c->static_dir.empty());
  EXPECT_TRUE(c->replicas.empty());
  EXPECT_EQ(c->replica_max_lag, std::chrono::milliseconds(5000));
  EXPECT_EQ(c->api_title, "cleave application");
  EXPECT_EQ(c->api_version, "1");
  // No file at all (an empty path) is the same.
  auto none = cleave::load_config({});
  ASSERT_TRUE(none);
  EXPECT_EQ(none->database, "var/app.db");
}

TEST_F(load_config_test, every_member_of_the_file_is_read) {
  auto c = cleave::load_config(file(R"({
    "database": "postgresql://db/app",
    "replicas": ["postgresql://r1/app", "postgresql://r2/app"],
    "replica_max_lag_ms": 250,
    "listen": "0.0.0.0:9000",
    "max_body_bytes": 4096,
    "max_header_bytes": 2048,
    "max_json_depth": 8,
    "max_connections": 10,
    "idle_timeout_seconds": 5,
    "workers": 2,
    "io_threads": 3,
    "inline_queries": false,
    "max_parked_reads": 7,
    "tokens": {"s3cret": {"subject": "ann", "roles": ["admin", "clerk"]}},
    "roles": {"shop.restock": "clerk"},
    "cli_principal": {"subject": "ops", "roles": ["admin"]},
    "log_level": "debug",
    "run_projector": false,
    "static_dir": "web",
    "openapi": {"title": "Shop", "version": "2.1"}
  })"));
  ASSERT_TRUE(c) << c.error().describe();
  EXPECT_EQ(c->database, "postgresql://db/app");
  EXPECT_EQ(c->replicas, (std::vector<std::string>{"postgresql://r1/app", "postgresql://r2/app"}));
  EXPECT_EQ(c->replica_max_lag, std::chrono::milliseconds(250));
  EXPECT_EQ(c->listen, "0.0.0.0:9000");
  EXPECT_EQ(c->max_body_bytes, 4096u);
  EXPECT_EQ(c->max_header_bytes, 2048u);
  EXPECT_EQ(c->max_json_depth, 8);
  EXPECT_EQ(c->max_connections, 10u);
  EXPECT_EQ(c->idle_timeout, std::chrono::seconds(5));
  EXPECT_EQ(c->workers, 2u);
  EXPECT_EQ(c->io_threads, 3u);
  EXPECT_FALSE(c->inline_queries);
  EXPECT_EQ(c->max_parked_reads, 7u);
  ASSERT_EQ(c->tokens.size(), 1u);
  EXPECT_EQ(c->tokens.at("s3cret").subject, "ann");
  EXPECT_EQ(c->tokens.at("s3cret").roles, (std::vector<std::string>{"admin", "clerk"}));
  EXPECT_EQ(c->roles, (std::map<std::string, std::string>{{"shop.restock", "clerk"}}));
  EXPECT_EQ(c->cli_principal.subject, "ops");
  EXPECT_TRUE(c->cli_principal.has_role("admin"));
  EXPECT_EQ(c->log_level, "debug");
  EXPECT_FALSE(c->run_projector);
  EXPECT_EQ(c->static_dir, "web");
  EXPECT_EQ(c->api_title, "Shop");
  EXPECT_EQ(c->api_version, "2.1");
}

TEST_F(load_config_test, members_left_out_keep_their_defaults) {
  auto c = cleave::load_config(file(R"({"workers": 16, "openapi": {"version": "3"}})"));
  ASSERT_TRUE(c) << c.error().describe();
  EXPECT_EQ(c->workers, 16u);
  EXPECT_EQ(c->api_version, "3");
  EXPECT_EQ(c->api_title, "cleave application");
  EXPECT_EQ(c->max_body_bytes, 1u << 20);
  EXPECT_EQ(c->database, "var/app.db");
}

TEST_F(load_config_test, a_malformed_file_is_an_error_naming_the_file_and_the_member) {
  const auto wrong_type = error_for(R"({"workers": "four"})");
  EXPECT_EQ(wrong_type.category, cleave::errc::validation);
  EXPECT_THAT(wrong_type.message, HasSubstr("app.json"));
  EXPECT_THAT(wrong_type.describe(), HasSubstr("workers"));

  const auto misspelt = error_for(R"({"wokers": 4})");
  EXPECT_THAT(misspelt.describe(), HasSubstr("wokers"));
  EXPECT_THAT(misspelt.describe(), HasSubstr("unknown member"));

  const auto nested = error_for(R"({"tokens": {"t": {"subject": "ann", "roles": "admin"}}})");
  EXPECT_THAT(nested.describe(), HasSubstr("tokens.t.roles"));

  const auto fraction = error_for(R"({"max_body_bytes": 1.5})");
  EXPECT_THAT(fraction.describe(), HasSubstr("max_body_bytes"));

  const auto not_json = error_for(R"({"workers": 4,)");
  EXPECT_EQ(not_json.category, cleave::errc::validation);
  EXPECT_THAT(not_json.message, HasSubstr("app.json"));
}

TEST_F(load_config_test, limits_must_be_positive_and_the_error_names_the_limit) {
  for (const std::string member :
       {"max_body_bytes", "max_header_bytes", "max_json_depth", "max_connections", "workers",
        "io_threads", "max_parked_reads", "idle_timeout_seconds", "replica_max_lag_ms",
        "request_timeout_ms"}) {
    for (const char* value : {"0", "-1"}) {
      SCOPED_TRACE(member + " = " + value);
      const auto e = error_for("{\"" + member + "\": " + value + "}");
      EXPECT_EQ(e.category, cleave::errc::validation);
      EXPECT_EQ(e.message, member + ": must be positive");
      ASSERT_EQ(e.fields.size(), 1u);
      EXPECT_EQ(e.fields[0].path, member);
    }
    SCOPED_TRACE(member);
    EXPECT_TRUE(cleave::load_config(file("{\"" + member + "\": 1}")));
  }
}

TEST_F(load_config_test, a_limit_too_large_for_its_setting_is_refused_not_cut_short) {
  // max_json_depth is an int: 2^32 + 1 would otherwise wrap round to a depth of 1.
  const auto e = error_for(R"({"max_json_depth": 4294967297})");
  EXPECT_EQ(e.category, cleave::errc::validation);
  EXPECT_EQ(e.message, "max_json_depth: must be at most 2147483647");
  auto largest = cleave::load_config(file(R"({"max_json_depth": 2147483647})"));
  ASSERT_TRUE(largest) << largest.error().describe();
  EXPECT_EQ(largest->max_json_depth, 2147483647);
  // Threads: one each, so a typo's extra digits are refused rather than started.
  for (const std::string member : {"workers", "io_threads"}) {
    SCOPED_TRACE(member);
    EXPECT_EQ(error_for("{\"" + member + "\": 100000}").message, member + ": must be at most 1024");
    EXPECT_TRUE(cleave::load_config(file("{\"" + member + "\": 1024}")));
  }
  // Past what any integer member holds: refused by the decoder, naming the member.
  EXPECT_THAT(error_for(R"({"workers": 99999999999999999999})").describe(), HasSubstr("workers"));
}

TEST_F(load_config_test, the_environment_overrides_the_file) {
  const auto path = file(R"({"database": "from-file.db", "listen": "127.0.0.1:1",
                             "log_level": "warn", "run_projector": true,
                             "replicas": ["postgresql://file/app"]})");
  ::setenv("CLEAVE_DATABASE", "postgresql://env/app", 1);
  ::setenv("CLEAVE_LISTEN", "0.0.0.0:8081", 1);
  ::setenv("CLEAVE_LOG_LEVEL", "trace", 1);
  ::setenv("CLEAVE_PROJECTOR", "off", 1);
  ::setenv("CLEAVE_REPLICAS", "postgresql://a/app,,postgresql://b/app,", 1);
  auto c = cleave::load_config(path);
  ASSERT_TRUE(c) << c.error().describe();
  EXPECT_EQ(c->database, "postgresql://env/app");
  EXPECT_EQ(c->listen, "0.0.0.0:8081");
  EXPECT_EQ(c->log_level, "trace");
  EXPECT_FALSE(c->run_projector);
  // Comma-separated, empty items skipped; they replace the file's list.
  EXPECT_EQ(c->replicas, (std::vector<std::string>{"postgresql://a/app", "postgresql://b/app"}));
}

TEST_F(load_config_test, the_environment_applies_without_a_file_and_empty_variables_are_ignored) {
  ::setenv("CLEAVE_DATABASE", ":memory:", 1);
  ::setenv("CLEAVE_LISTEN", "", 1);
  ::setenv("CLEAVE_PROJECTOR", "", 1);
  auto c = cleave::load_config(dir.path() / "absent.json");
  ASSERT_TRUE(c) << c.error().describe();
  EXPECT_EQ(c->database, ":memory:");
  EXPECT_EQ(c->listen, "127.0.0.1:8080");
  EXPECT_TRUE(c->run_projector);
  ::setenv("CLEAVE_PROJECTOR", "on", 1);
  auto on = cleave::load_config(file(R"({"run_projector": false})"));
  ASSERT_TRUE(on);
  EXPECT_TRUE(on->run_projector);
}

TEST_F(load_config_test, cleave_projector_must_be_on_or_off) {
  for (const char* value : {"yes", "ON", "0", "true"}) {
    SCOPED_TRACE(value);
    ::setenv("CLEAVE_PROJECTOR", value, 1);
    auto c = cleave::load_config({});
    ASSERT_FALSE(c);
    EXPECT_EQ(c.error().category, cleave::errc::validation);
    EXPECT_EQ(c.error().message, "CLEAVE_PROJECTOR: must be on or off");
  }
}

}  // namespace
