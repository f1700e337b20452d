// The projector's front: registration of projections and in-memory views, and where each stands
// (status, staleness). The parts live beside it: inline_source.hpp (inline projections),
// checkpoints.cpp, batches.cpp, apply.cpp, dead_letters.cpp, materialized.cpp, rebuild.cpp,
// waiting.hpp and waits.cpp, worker.cpp.

#include <cleave/read/projector.hpp>

#include <algorithm>
#include <chrono>
#include <random>
#include <utility>

#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "claims.hpp"
#include "inline_source.hpp"
#include "internal.hpp"
#include "waiting.hpp"

namespace cleave {

using namespace read_detail;

namespace {

// "<host>-<pid>-<random>": unique among the processes sharing a database, and telling where
// each runs.
std::string made_up_node_name() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) host[0] = 0;
  std::random_device random;
  return fmt::format("{}-{}-{:04x}", host[0] ? host : "node", ::getpid(), random() & 0xffff);
}

}  // namespace

projector::projector(store& db, const upcasters* rewrites, projector_options opts)
    : db_(db),
      rewrites_(rewrites),
      opts_(std::move(opts)),
      source_(std::make_unique<inline_source>(*this, db)),
      node_(opts_.node.empty() ? made_up_node_name() : opts_.node),
      waiting_(std::make_unique<waiting>(*this)) {
  db_.migrate("cleave.projector", checkpoint_schema);
}

bool projector::shares_units() const noexcept {
  return db_.concurrent_writers() > 1 && !opts_.lease.empty();
}

projector::~projector() {
  stop();
  waiting_->stop();  // before the members its thread reads go
}

void projector::add(projection p, store* views) {
  if (!views) views = &db_;
  if (std::any_of(projections_.begin(), projections_.end(),
                  [&](const entry& q) { return q.def.name() == p.name(); }))
    throw std::logic_error(fmt::format("a projection named '{}' is already registered", p.name()));
  if (p.mode() == projection_mode::inline_ && views != &db_)
    throw std::logic_error(fmt::format(
        "projection '{}' is inline but its view lives in another store: an inline view must be "
        "in the write database, to change in the command's own transaction; make it async",
        p.name()));
  if (p.mode() == projection_mode::materialized && views != &db_)
    throw std::logic_error(fmt::format(
        "projection '{}' is a materialized view of the write tables: it lives in the write "
        "database",
        p.name()));
  if (!p.batch_sql_text().empty() && (views != &db_ || p.mode() != projection_mode::async))
    throw std::logic_error(fmt::format(
        "projection '{}' is set-based: it reads the log where it lives, so it is async and its "
        "view is in the write database",
        p.name()));
  if (p.sink_handler() && (p.mode() != projection_mode::async || !p.batch_sql_text().empty() ||
                           !p.folds().empty() || p.event_types().size() != p.sink_types().size()))
    throw std::logic_error(fmt::format(
        "projection '{}' has a sink: it is async, without handlers, folds or batch_sql", p.name()));
  if (p.name().find('#') != std::string::npos)
    throw std::logic_error(fmt::format(
        "projection '{}': '#' is not allowed in a projection's name (it names its units)",
        p.name()));
  if (p.partition_count() > 1 &&
      (p.mode() != projection_mode::async || p.sink_handler() || !p.batch_sql_text().empty()))
    throw std::logic_error(fmt::format(
        "projection '{}' has partitions: only an async projection with handlers or folds can be "
        "split into units (a set-based statement or a sink sees the whole log)",
        p.name()));
  if (p.mode() != projection_mode::async && !p.group_name().empty())
    throw std::logic_error(
        fmt::format("projection '{}' is in group '{}': only async projections run in groups",
                    p.name(), p.group_name()));
  if (views != &db_) views->migrate("cleave.projector", checkpoint_schema);
  const auto version = p.version_key();
  std::vector<std::string> all_units{p.name()};
  if (p.partition_count() > 1) {
    all_units.clear();
    for (std::uint32_t i = 0; i < p.partition_count(); ++i)
      all_units.push_back(fmt::format("{}#{}/{}", p.name(), i, p.partition_count()));
  }
  std::span<const std::string> units(all_units);
  if (units.size() == 1) units = {};  // the projection's own row is its one unit
  const bool upgrade = needs_upgrade(p, *views, version);
  if (p.mode() == projection_mode::materialized) {
    const std::string sql =
        db_.materialized_view_schema(p.table(), p.select_sql(), p.key_columns());
    const migration view[] = {{1, "materialized view", sql}};
    views->migrate("projection:" + p.name(), view);
  } else if (!p.schema_sql().empty()) {
    const std::string sql = expand_view(p.schema_sql(), p.table());
    const migration view[] = {{1, "view", sql}};
    views->migrate("projection:" + p.name(), view);
  }
  // Where a view made now starts: the log's beginning, or, for a projection that reacts only to
  // what happens from now on, the log's gap-safe head (no transaction still running can commit
  // an event below it; one that just committed may be handled, never one skipped).
  position_token start;
  if (p.starts_at_head() && reading(*views, [&](read_context& ctx) {
        return !ctx.one<std::int64_t>("select 1 from cleave_checkpoints where name = $1", p.name());
      }))
    start = db_.readable_head();
  writing(*views, [&](write_transaction&, write_context& tx) {
    tx.exec(
        "insert into cleave_checkpoints(name, transaction_id, position, version) values ($1, $3, "
        "$4, $2) on conflict(name) do nothing",
        p.name(), version, tx_of(start), pos_of(start));
    // A view made before versions were recorded is taken as the current version.
    tx.exec("update cleave_checkpoints set version = $2 where name = $1 and version is null",
            p.name(), version);
    // The units of a partitioned view start where the view does (those of a new version's
    // partitioning are made by the swap that brings it in).
    if (!upgrade)
      for (const auto& unit : units)
        tx.exec(
            "insert into cleave_checkpoints(name, transaction_id, position, version) select $2, "
            "transaction_id, position, version from cleave_checkpoints where name = $1 "
            "on conflict(name) do nothing",
            p.name(), unit);
    return true;
  });
  auto types = p.event_types();
  if (rewrites_ && !types.empty()) types = rewrites_->stored_as(types);
  entry added{std::move(p),
              views,
              std::move(types),
              version,
              std::make_unique<std::atomic<bool>>(false),
              std::move(all_units)};
  added.upgrading->store(upgrade);
  if (upgrade)
    spdlog::info(
        "projection {}: the live view is of another version; building version {} beside it",
        added.def.name(), version);
  projections_.push_back(std::move(added));
}

bool projector::needs_upgrade(const projection& p, store& views, const std::string& version) {
  if (p.mode() == projection_mode::memory) return false;
  const auto live =
      reading(views, [&](read_context& ctx) { return recorded_version(ctx, p.name()); });
  if (live.empty() || live == version) return false;
  if (!p.not_rebuildable_reason().empty())
    throw std::logic_error(fmt::format(
        "projection '{}' changed version (its view was built by {}, this one is {}), but it "
        "cannot be rebuilt: {}",
        p.name(), live, version, p.not_rebuildable_reason()));
  if (p.mode() != projection_mode::async || p.schema_sql().empty())
    throw std::logic_error(fmt::format(
        "projection '{}' changed version (its view was built by {}, this one is {}), but only "
        "an async projection with a schema can be rebuilt beside its live view; make it async "
        "for the change, or drop its view and its cleave_checkpoints row to start it afresh",
        p.name(), live, version));
  return true;
}

void projector::add(memory_view_base& view) {
  const auto taken = names();
  if (std::find(taken.begin(), taken.end(), view.name()) != taken.end())
    throw std::logic_error(
        fmt::format("a projection named '{}' is already registered", view.name()));
  memory_views_.push_back(&view);
}

std::vector<std::string> projector::groups() const {
  std::vector<std::string> out{""};
  for (const auto& p : projections_)
    if (std::find(out.begin(), out.end(), p.def.group_name()) == out.end())
      out.push_back(p.def.group_name());
  return out;
}

std::vector<std::string> projector::names() const {
  std::vector<std::string> out;
  out.reserve(projections_.size() + memory_views_.size());
  for (const auto& p : projections_) out.push_back(p.def.name());
  for (const auto* m : memory_views_) out.push_back(m->name());
  return out;
}

bool projector::views_in_log_database(std::string_view name) const {
  if (find_memory(name)) return false;
  const auto* views = find(name).views;
  return views == nullptr || views == &db_;
}

projection_mode projector::mode_of(std::string_view name) const {
  return find_memory(name) ? projection_mode::memory : find(name).def.mode();
}

memory_view_base* projector::find_memory(std::string_view name) const {
  for (auto* m : memory_views_)
    if (m->name() == name) return m;
  return nullptr;
}

session_source& projector::source() noexcept {
  return *source_;
}

const projector::entry& projector::find(std::string_view name) const {
  for (const auto& q : projections_)
    if (q.def.name() == name) return q;
  throw error_exception({errc::not_found, fmt::format("no projection named '{}'", name), {}});
}

std::chrono::milliseconds projector::staleness(std::string_view name) {
  if (mode_of(name) == projection_mode::inline_) return {};
  // Not read_events(): on PostgreSQL it hides commits behind a running transaction, and a
  // staleness that overlooked them would pass stale data as fresh.
  const auto behind = db_.distance(checkpoint(name));
  if (behind.events == 0) return {};
  // At least 1 ms while anything is pending: an event recorded this very millisecond still
  // makes the view stale.
  return std::chrono::milliseconds(
      std::max<std::int64_t>(1, unix_ms() - behind.oldest_recorded_at_ms));
}

projection_status projector::status(std::string_view name) {
  if (const auto* m = find_memory(name)) {
    projection_status out;
    out.name = m->name();
    out.mode = projection_mode::memory;
    out.checkpoint = m->checkpoint();
    fill_lag(db_, out);
    out.dead_letters = m->failures().size();
    return out;
  }
  const auto& p = find(name);
  projection_status out;
  out.name = p.def.name();
  out.mode = p.def.mode();
  // An async projection's units read once: its checkpoint is the least of theirs.
  const auto rows =
      out.mode == projection_mode::async ? unit_checkpoints(p) : std::vector<unit_row>{};
  out.checkpoint = out.mode == projection_mode::async ? least_checkpoint(rows) : checkpoint(name);
  out.upgrading = p.upgrading->load();
  out.group = p.def.group_name();
  if (out.mode == projection_mode::async || out.mode == projection_mode::materialized) {
    fill_lag(db_, out);
  }
  if (out.mode == projection_mode::async) {
    for (const auto& r : rows) {
      projection_status one;
      one.checkpoint = token_of(r.transaction_id, r.position);
      if (rows.size() > 1) fill_lag(db_, one);
      out.units.push_back(
          {r.name, one.checkpoint, rows.size() > 1 ? one.lag_events : out.lag_events, r.owner});
    }
  }
  reading(*p.views, [&](read_context& ctx) {
    const auto [own, prefix, length] = unit_rows_args(name);
    out.dead_letters = static_cast<std::size_t>(
        ctx.one<std::int64_t>(fmt::format("select count(*) from cleave_dead_letters where {}",
                                          of_projection_sql("projection")),
                              own, prefix, length)
            .value_or(0));
    if (auto r = ctx.one<rebuild_row>(
            fmt::format("select {} from cleave_rebuilds where name = $1", rebuild_columns), name))
      out.rebuild_position = static_cast<std::uint64_t>(r->position);
    out.version = recorded_version(ctx, name);
    return 0;
  });
  if (out.upgrading && out.version == p.version) {  // another process swapped it in
    p.upgrading->store(false);
    out.upgrading = false;
  }
  return out;
}

}  // namespace cleave
