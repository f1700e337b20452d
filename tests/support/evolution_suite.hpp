#pragma once
// Change without fear, on any backend (typed tests, label `evolution`): a view whose events are
// parked is never read as current, numbers read into the members that hold them, and the log's
// columns have one shape for set-based projections on every backend.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cleave/app/app.hpp>
#include <cleave/cleave.hpp>
#include <cleave/read/consistency.hpp>
#include <cleave/read/projector.hpp>

#include "views_model.hpp"

namespace evolution {

using views::card;
using views::card_by_id;
using views::register_customer;

struct balance_row {
  std::int64_t balance = 0;
};
CLEAVE_RECORD(balance_row, balance)

struct ratio_row {
  double ratio = 0;
};
CLEAVE_RECORD(ratio_row, ratio)

inline std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

template <class Backend>
struct evolving : testing::Test {
  Backend backend;
  std::unique_ptr<cleave::store> db = backend.open();

  // Runs `sql` in a read-only transaction and decodes its first row as T, as a query would.
  template <class T>
  cleave::result<T> read_one(const std::string& sql) {
    auto& tx = db->begin_read({});
    const cleave::request_meta meta;
    cleave::read_context ctx(&tx, meta);
    cleave::result<T> out = cleave::fail(cleave::errc::not_found, "no row");
    try {
      out = ctx.one<T>(sql);
    } catch (const cleave::error_exception& e) {
      out = std::unexpected(e.error());
    }
    tx.finish();
    return out;
  }
};

TYPED_TEST_SUITE_P(evolving);

// Release 2 of an application writes a column its view does not have (the schema was not
// changed with the handler): every new event fails and is parked. Reads that must be current
// refuse the view, naming it and its dead letters, instead of answering from it as if it were.
TYPED_TEST_P(evolving, a_view_with_parked_events_refuses_reads_that_must_include_them) {
  cleave::command_bus commands{this->db.get()};
  commands.add(views::register_handler);
  ASSERT_TRUE(commands.send(register_customer{"c1", "Ada"}));
  {
    cleave::projector release1(*this->db);
    release1.add(views::cards("cards_v"));
    views::settle(release1);
  }
  const auto before_release2 = this->db->head();
  ASSERT_TRUE(commands.send(register_customer{"c2", "Grace"}));

  cleave::projector release2(*this->db);
  release2.set_max_attempts(1);
  cleave::projection changed{"cards_v"};
  changed
      .schema(
          "create table {view}(id text primary key, name text not null, visits bigint not null)")
      .on([](const views::customer_registered& e, cleave::view_context& v) {
        v.exec("insert into {view}(id, name, visits, tier) values ($1, $2, 0, 'new')", e.id,
               e.name);
      });
  release2.add(std::move(changed));
  views::settle(release2);
  ASSERT_EQ(release2.dead_letters("cards_v").size(), 1u) << "the new column does not exist";
  EXPECT_EQ(release2.checkpoint("cards_v"), this->db->head()) << "the checkpoint moved on";

  cleave::query_bus queries{this->db.get()};
  queries.use<cleave::read_your_writes>(release2).reads("views.card_by_id", {"cards_v"});
  queries.add([](const card_by_id& q, const cleave::read_context& view) {
    return view.one<card>("select id, name, visits from cards_v where id = $1", q.id);
  });
  cleave::request_meta meta;
  meta.deadline = cleave::clock::now() + std::chrono::seconds(5);
  for (const auto& wanted : {cleave::strong(), cleave::bounded(std::chrono::minutes(1)),
                             cleave::at_least(this->db->head())}) {
    meta.consistency = wanted;
    auto refused = queries.ask(card_by_id{"c1"}, meta);
    ASSERT_FALSE(refused) << "a view missing a parked event answered as current";
    EXPECT_EQ(refused.error().category, cleave::errc::unavailable);
    EXPECT_THAT(refused.error().message, testing::HasSubstr("'cards_v' has 1 parked event"));
    EXPECT_THAT(refused.error().message, testing::Not(testing::HasSubstr("tier")))
        << "the handler's failure (SQL) stays in the log";
  }
  // Eventual reads answer from the view as it is; so does a read that accepts the dead letters,
  // and one that asks only for what came before the parked event.
  auto eventual = queries.ask(card_by_id{"c1"});
  ASSERT_TRUE(eventual) << eventual.error().describe();
  EXPECT_EQ(eventual->name, "Ada");
  meta.consistency = cleave::strong().accepting_dead_letters();
  EXPECT_TRUE(queries.ask(card_by_id{"c1"}, meta));
  meta.consistency = cleave::at_least(before_release2);
  EXPECT_TRUE(queries.ask(card_by_id{"c1"}, meta));
  // The spelling transports use.
  auto parsed = cleave::parse_consistency("strong;dead_letters=accept");
  ASSERT_TRUE(parsed);
  EXPECT_TRUE(parsed->accepts_dead_letters);
  EXPECT_FALSE(cleave::parse_consistency("strong;dead_letters=maybe"));
  EXPECT_FALSE(cleave::parse_consistency("strong;dead_letters=accept;dead_letters=accept"));
}

// PostgreSQL's sum() of bigints is numeric, SQLite's an integer; avg() is numeric or real. What
// holds an integer reads into an integer member on both; what does not is an error that says so.
TYPED_TEST_P(evolving, numbers_read_into_the_members_that_hold_them_on_every_backend) {
  {
    cleave::write_scope tx(*this->db, {});
    tx->exec("create table ev_amounts(n bigint not null, r double precision not null)", {});
    tx->exec("insert into ev_amounts(n, r) values (1099511627776, 1.5), (3, 2.25)", {});
    tx.commit();
  }
  auto sum = this->template read_one<balance_row>("select sum(n) as balance from ev_amounts");
  ASSERT_TRUE(sum) << sum.error().describe();
  EXPECT_EQ(sum->balance, 1099511627779);
  auto mean =
      this->template read_one<balance_row>("select avg(n) as balance from ev_amounts where n = 3");
  ASSERT_TRUE(mean) << mean.error().describe();
  EXPECT_EQ(mean->balance, 3);
  auto ratio = this->template read_one<ratio_row>("select avg(r) as ratio from ev_amounts");
  ASSERT_TRUE(ratio) << ratio.error().describe();
  EXPECT_EQ(ratio->ratio, 1.875);
  for (const auto* sql :
       {"select sum(r) as balance from ev_amounts", "select 99999999999999999999 as balance"}) {
    auto odd = this->template read_one<balance_row>(sql);
    ASSERT_FALSE(odd) << sql;
    EXPECT_EQ(odd.error().category, cleave::errc::internal);
    EXPECT_THAT(odd.error().message,
                testing::HasSubstr("column 'balance' is a number with a fraction, or beyond 64 "
                                   "bits, not an integer"));
    EXPECT_THAT(odd.error().message, testing::Not(testing::HasSubstr("3.75")));
  }
}

struct recorded_row {
  std::int64_t position = 0;
  std::int64_t at_ms = 0;
  std::string type;
};
CLEAVE_RECORD(recorded_row, position, at_ms, type)

// A set-based projection's SQL runs unchanged on both backends: {events}.recorded_at_ms is Unix
// milliseconds there, the same value handlers see; and it sees types as stored (not upcast).
TYPED_TEST_P(evolving, a_set_based_projection_sees_one_shape_of_the_log_on_every_backend) {
  cleave::command_bus commands{this->db.get()};
  commands.add([](const register_customer& c, cleave::write_context& tx) -> cleave::result<void> {
    if (c.name == "old")
      tx.emit(c.id, views::customer_signed_up{c.id, c.name});  // as release 1 stored it
    else
      tx.emit(c.id, views::customer_registered{c.id, c.name});
    return {};
  });
  const auto started_ms = unix_ms_now();
  ASSERT_TRUE(commands.send(register_customer{"c1", "old"}));
  ASSERT_TRUE(commands.send(register_customer{"c2", "new"}));
  cleave::upcasters upcasters;
  upcasters.add("views.customer_signed_up", "views.customer_registered");
  cleave::projector projector(*this->db, &upcasters);
  cleave::projection seen{"log_seen"};
  seen.schema(
          "create table {view}(position bigint primary key, at_ms bigint not null, type text "
          "not null)")
      .batch_sql(
          "insert into {view}(position, at_ms, type) select position, recorded_at_ms, "
          "type from {events}");
  projector.add(std::move(seen));
  views::settle(projector);

  const auto log = this->db->read_events({}, 100);
  ASSERT_EQ(log.size(), 2u);
  auto& tx = this->db->begin_read({});
  const cleave::request_meta meta;
  cleave::read_context ctx(&tx, meta);
  const auto rows = ctx.template many<recorded_row>(
      "select position, at_ms, type from log_seen order by position");
  tx.finish();
  ASSERT_EQ(rows.size(), 2u);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].at_ms, log[i].recorded_at_ms) << "the same instant handlers see";
    EXPECT_GE(rows[i].at_ms, started_ms - 1000);
    EXPECT_LE(rows[i].at_ms, unix_ms_now() + 1000);
  }
  EXPECT_EQ(rows[0].type, "views.customer_signed_up") << "set-based SQL reads types as stored";
  EXPECT_EQ(rows[1].type, "views.customer_registered");
}

// Release 2 of the card view: a column more, so its version differs from release 1's.
inline cleave::projection cards_with_tier(std::string name) {
  cleave::projection p{std::move(name)};
  p.version(2)
      .schema(
          "create table {view}(id text primary key, name text not null, visits bigint not null, "
          "tier text not null)")
      .on([](const views::customer_registered& e, cleave::view_context& v) {
        v.exec("insert into {view}(id, name, visits, tier) values ($1, $2, 0, 'new')", e.id,
               e.name);
      });
  return p;
}

// Every table of the database whose name begins with `prefix` (both backends' catalogs).
template <class Backend>
std::int64_t tables_named(evolving<Backend>& t, const std::string& prefix) {
  const auto sql = t.db->dialect() == "sqlite"
                       ? "select count(*) as n from sqlite_master where type = 'table' and name "
                         "like '" +
                             prefix + "%'"
                       : "select count(*) as n from information_schema.tables where table_name "
                         "like '" +
                             prefix + "%'";
  return t.template read_one<std::int64_t>(sql).value_or(-1);
}

// Release 2 changes a live view (a column more, version 2). Starting it builds version 2 beside
// the live view, which keeps answering eventual reads while reads that must be current wait and
// say why; then version 2 is swapped in and the old table dropped once its grace is over.
TYPED_TEST_P(evolving, a_changed_projection_is_built_beside_the_live_one_and_swapped_in) {
  cleave::command_bus commands{this->db.get()};
  commands.add(views::register_handler);
  ASSERT_TRUE(commands.send(register_customer{"c1", "Ada"}));
  ASSERT_TRUE(commands.send(register_customer{"c2", "Grace"}));
  std::string release1_version;
  {
    cleave::projector release1(*this->db);
    release1.add(views::cards("cards_bg"));
    views::settle(release1);
    release1_version = release1.status("cards_bg").version;
  }
  ASSERT_FALSE(release1_version.empty());

  auto opts = views::slow_poll();
  opts.retired_grace = std::chrono::milliseconds(0);
  cleave::projector release2(*this->db, nullptr, opts);
  release2.add(cards_with_tier("cards_bg"));
  auto status = release2.status("cards_bg");
  EXPECT_TRUE(status.upgrading);
  EXPECT_EQ(status.version, release1_version) << "release 1's view is live until the swap";
  ASSERT_TRUE(commands.send(register_customer{"c3", "Barbara"}));

  cleave::query_bus queries{this->db.get()};
  queries.use<cleave::read_your_writes>(release2).reads("views.card_by_id", {"cards_bg"});
  queries.add([](const card_by_id& q, const cleave::read_context& view) {
    return view.one<card>("select id, name, visits from cards_bg where id = $1", q.id);
  });
  auto eventual = queries.ask(card_by_id{"c2"});
  ASSERT_TRUE(eventual) << "the old version answers eventual reads: "
                        << eventual.error().describe();
  EXPECT_EQ(eventual->name, "Grace");
  cleave::request_meta meta;
  meta.consistency = cleave::strong();
  meta.deadline = cleave::clock::now() + std::chrono::milliseconds(300);
  auto waiting = queries.ask(card_by_id{"c3"}, meta);
  ASSERT_FALSE(waiting) << "a strong read answered from the old version, without c3";
  EXPECT_EQ(waiting.error().category, cleave::errc::unavailable);
  EXPECT_THAT(waiting.error().message, testing::HasSubstr("its new version is built beside it"));

  // Verify compares only a view with itself: across versions it says so and swaps.
  cleave::rebuild_options verify;
  verify.verify = true;
  views::wait_readable(*this->db);
  const auto rebuilt = release2.rebuild("cards_bg", verify);
  EXPECT_TRUE(rebuilt.swapped);
  EXPECT_EQ(rebuilt.differences, -1);
  EXPECT_THAT(rebuilt.difference, testing::HasSubstr("not compared: the live view is of another "
                                                     "version"));
  views::settle(release2);
  status = release2.status("cards_bg");
  EXPECT_FALSE(status.upgrading);
  EXPECT_NE(status.version, release1_version);
  EXPECT_EQ(status.checkpoint, this->db->head());
  EXPECT_EQ(
      this->template read_one<std::int64_t>("select count(*) as n from cards_bg where tier = 'new'")
          .value_or(-1),
      3);
  meta.deadline = cleave::clock::now() + std::chrono::seconds(5);
  auto current = queries.ask(card_by_id{"c3"}, meta);
  ASSERT_TRUE(current) << current.error().describe();
  EXPECT_EQ(current->name, "Barbara");
  EXPECT_EQ(tables_named(*this, "cards_bg_retired"), 0) << "the old version's table is dropped";
  EXPECT_EQ(tables_named(*this, "cards_bg_rebuild"), 0);

  // Started again, release 2 finds its own version live: nothing to build.
  cleave::projector again(*this->db);
  again.add(cards_with_tier("cards_bg"));
  EXPECT_FALSE(again.status("cards_bg").upgrading);
  // An inline view cannot be built beside itself: a changed one is refused, by name.
  cleave::projector inline_release(*this->db);
  try {
    inline_release.add(views::cards("cards_bg").inline_());
    ADD_FAILURE() << "an inline view of another version was taken";
  } catch (const std::logic_error& e) {
    EXPECT_THAT(e.what(), testing::HasSubstr("projection 'cards_bg' changed version"));
  }
}

// A rebuild interrupted under release 1 leaves a shadow of version 1; release 2 drops it and
// starts afresh (resuming it would swap in a view without release 2's column).
TYPED_TEST_P(evolving, a_stale_shadow_of_another_version_is_dropped_never_resumed) {
  cleave::command_bus commands{this->db.get()};
  commands.add(views::register_handler);
  for (int i = 0; i < 10; ++i)
    ASSERT_TRUE(commands.send(register_customer{"c" + std::to_string(i), "n"}));
  {
    cleave::projector release1(*this->db);
    release1.add(views::cards("cards_st"));
    views::settle(release1);
    cleave::rebuild_options crashing;
    crashing.chunk = 3;
    crashing.on_progress = [](const cleave::rebuild_progress& p) {
      if (p.applied > 0) throw std::runtime_error("killed");
    };
    EXPECT_THROW(release1.rebuild("cards_st", crashing), std::runtime_error);
    ASSERT_TRUE(release1.status("cards_st").rebuild_position) << "a shadow is left behind";
  }
  const auto stale = this->template read_one<std::string>(
      "select shadow from cleave_rebuilds where name = 'cards_st'");
  ASSERT_TRUE(stale);
  ASSERT_EQ(views::rows(*this->db, *stale), 3);

  auto opts = views::slow_poll();
  opts.retired_grace = std::chrono::milliseconds(0);
  cleave::projector release2(*this->db, nullptr, opts);
  release2.add(cards_with_tier("cards_st"));
  // An explicit rebuild of release 2 does not resume release 1's shadow either.
  std::vector<cleave::rebuild_progress> seen;
  cleave::rebuild_options watched;
  watched.on_progress = [&](const cleave::rebuild_progress& p) { seen.push_back(p); };
  views::wait_readable(*this->db);
  const auto done = release2.rebuild("cards_st", watched);
  EXPECT_TRUE(done.swapped);
  EXPECT_FALSE(done.resumed);
  EXPECT_EQ(done.applied, 10u);
  EXPECT_EQ(tables_named(*this, *stale), 0) << "the stale shadow is dropped";
  EXPECT_EQ(
      this->template read_one<std::int64_t>("select count(*) as n from cards_st where tier = 'new'")
          .value_or(-1),
      10);
  EXPECT_FALSE(release2.status("cards_st").upgrading);

  // An in-memory view has no table to rebuild: refused at once, by name.
  cleave::memory_view<std::int64_t> counted{"counted"};
  counted.on([](const views::customer_registered&, std::int64_t& n) { ++n; });
  release2.add(counted);
  try {
    release2.check_rebuildable("counted");
    ADD_FAILURE() << "an in-memory view was taken for a rebuild";
  } catch (const cleave::error_exception& e) {
    EXPECT_EQ(e.error().category, cleave::errc::validation);
    EXPECT_THAT(e.error().message, testing::HasSubstr("'counted' is an in-memory view"));
  }
}

REGISTER_TYPED_TEST_SUITE_P(evolving,
                            a_changed_projection_is_built_beside_the_live_one_and_swapped_in,
                            a_stale_shadow_of_another_version_is_dropped_never_resumed,
                            a_view_with_parked_events_refuses_reads_that_must_include_them,
                            numbers_read_into_the_members_that_hold_them_on_every_backend,
                            a_set_based_projection_sees_one_shape_of_the_log_on_every_backend);

}  // namespace evolution
