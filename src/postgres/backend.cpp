// Registers the PostgreSQL backend for `postgresql://` and `postgres://` URLs (see
// cleave/store/backends.hpp). The library's link options name `cleave_postgres_backend`, so a
// program that links cleave::postgres keeps this file even when nothing else refers to it.

#include <cleave/postgres/store.hpp>
#include <cleave/store/backends.hpp>

namespace {

std::unique_ptr<cleave::store> open_postgres(const cleave::store_settings& settings) {
  cleave::postgres::options o{.url = settings.url};
  o.replicas = settings.replicas;
  o.replica_max_lag = settings.replica_max_lag;
  return std::make_unique<cleave::postgres::store>(o);
}

}  // namespace

extern "C" {
extern const bool cleave_postgres_backend;
const bool cleave_postgres_backend = (cleave::register_backend("postgres", &open_postgres),
                                      cleave::register_backend("postgresql", &open_postgres));
}
