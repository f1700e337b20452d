#pragma once
// A PostgreSQL database of its own for one test, on the server the harness provides:
// CLEAVE_TEST_PG_URL when set, else the throwaway cluster whose URL the ctest fixture wrote to
// the file named by CLEAVE_TEST_PG_URL_FILE. Dropped afterwards.

#include <cstdlib>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>

#include <libpq-fe.h>

namespace cleave::testing {

inline std::string server_url() {
  if (const char* url = std::getenv("CLEAVE_TEST_PG_URL"); url && *url) return url;
  const char* file = std::getenv("CLEAVE_TEST_PG_URL_FILE");
  if (!file) throw std::runtime_error("set CLEAVE_TEST_PG_URL, or run the test through ctest");
  std::ifstream in(file);
  std::string url;
  std::getline(in, url);
  if (url.empty()) throw std::runtime_error(std::string("no server URL in ") + file);
  return url;
}

// The hot standby of that server (tests labelled `replica`): CLEAVE_TEST_PG_STANDBY_URL, or the
// URL the standby fixture wrote to CLEAVE_TEST_PG_STANDBY_URL_FILE.
inline std::string standby_url() {
  if (const char* url = std::getenv("CLEAVE_TEST_PG_STANDBY_URL"); url && *url) return url;
  const char* file = std::getenv("CLEAVE_TEST_PG_STANDBY_URL_FILE");
  if (!file)
    throw std::runtime_error("set CLEAVE_TEST_PG_STANDBY_URL, or run the test through ctest");
  std::ifstream in(file);
  std::string url;
  std::getline(in, url);
  if (url.empty()) throw std::runtime_error(std::string("no standby URL in ") + file);
  return url;
}

// The URL with its database name replaced (URIs only: postgresql://user@host:port/db?params).
inline std::string with_database(const std::string& url, const std::string& name) {
  const auto scheme = url.find("://");
  if (scheme == std::string::npos) throw std::runtime_error("the test server URL must be a URI");
  const auto slash = url.find('/', scheme + 3);
  const auto query = url.find('?', scheme + 3);
  const std::string host = url.substr(0, std::min(slash, query));
  const std::string params = query == std::string::npos ? "" : url.substr(query);
  return host + "/" + name + params;
}

inline void admin(const std::string& url, const std::string& sql) {
  PGconn* c = PQconnectdb(url.c_str());
  if (PQstatus(c) != CONNECTION_OK) {
    std::string why = PQerrorMessage(c);
    PQfinish(c);
    throw std::runtime_error("connecting to the test server: " + why);
  }
  PGresult* r = PQexec(c, sql.c_str());
  const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
  std::string why = PQresultErrorMessage(r);
  PQclear(r);
  PQfinish(c);
  if (!ok) throw std::runtime_error(sql + ": " + why);
}

class pg_database {
 public:
  pg_database() : server_(server_url()) {
    std::random_device rd;
    name_ = "cleave_t_" + std::to_string(rd()) + std::to_string(rd() % 1000);
    admin(server_, "create database " + name_);
    url_ = with_database(server_, name_);
  }
  ~pg_database() {
    try {
      admin(server_, "drop database if exists " + name_ + " with (force)");
    } catch (...) {
    }
  }
  pg_database(const pg_database&) = delete;
  pg_database& operator=(const pg_database&) = delete;

  const std::string& url() const { return url_; }
  const std::string& name() const { return name_; }
  void exec(const std::string& sql) const { admin(url_, sql); }

 private:
  std::string server_, name_, url_;
};

}  // namespace cleave::testing
