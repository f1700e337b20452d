// The one migration algorithm of every backend: steps in version order, each applied once in a
// transaction of its own under the backend's migration lock; a second process waits for the
// lock, then finds the step applied. When a read finds every step applied, no lock is taken.

#include <algorithm>
#include <vector>

#include <fmt/format.h>

#include <cleave/core/context.hpp>
#include <cleave/core/detail/bus_core.hpp>
#include <cleave/store/store.hpp>

namespace cleave {

void store::migrate(std::string_view component, std::span<const migration> migrations) {
  const auto sql = migration_sql();
  std::vector<const migration*> ordered;
  for (const auto& m : migrations) ordered.push_back(&m);
  std::sort(ordered.begin(), ordered.end(),
            [](const migration* a, const migration* b) { return a->version < b->version; });
  auto step = [&](const migration* m) {
    // Read committed: a step that waited for the lock sees the step the other process applied.
    write_scope tx(*this, detail::no_meta, isolation::read_committed);
    if (!sql.lock.empty()) tx->script(sql.lock);
    tx->script(fmt::format(
        "create table if not exists cleave_migrations(component text not null, version integer "
        "not null, name text not null, applied_at {} not null, primary key(component, version))",
        sql.time_type));
    if (m) {
      write_context ctx(&*tx, detail::no_meta);
      if (ctx.one<std::int64_t>(
                 "select count(*) from cleave_migrations where component = $1 and version = $2",
                 component, std::int64_t{m->version})
              .value_or(0) == 0) {
        tx->script(m->sql);
        ctx.exec(fmt::format("insert into cleave_migrations(component, version, name, applied_at) "
                             "values ($1, $2, $3, {})",
                             sql.now),
                 component, std::int64_t{m->version}, m->name);
      }
    }
    tx.commit();
  };
  // Every step already applied (a process starting on a migrated database): a read says so, and
  // no writer is waited for — a busy writer elsewhere would otherwise hold the start up.
  if (!ordered.empty()) {
    try {
      const auto applied = applied_migrations(component);
      if (std::all_of(ordered.begin(), ordered.end(), [&](const migration* m) {
            return std::find(applied.begin(), applied.end(), m->version) != applied.end();
          }))
        return;
    } catch (const error_exception&) {
      // The read failed: the steps below find out.
    }
  }
  if (ordered.empty()) step(nullptr);
  for (const auto* m : ordered) {
    try {
      step(m);
    } catch (const error_exception& e) {
      throw error_exception({e.error().category,
                             fmt::format("migration {} '{}' of {}: {}", m->version, m->name,
                                         component, e.error().message),
                             {}});
    }
  }
}

std::vector<int> store::applied_migrations(std::string_view component) {
  read_scope tx(*this, detail::no_meta, strong());
  read_context ctx(&*tx, detail::no_meta);
  std::vector<int> out;
  if (ctx.one<std::int64_t>(migration_sql().table_exists).value_or(0) == 0) return out;
  for (auto v : ctx.many<std::int64_t>(
           "select version from cleave_migrations where component = $1 order by version",
           component))
    out.push_back(static_cast<int>(v));
  return out;
}

}  // namespace cleave
