#pragma once
// The three write styles, on any backend (typed tests; instantiated per backend):
// a transaction script, a state-based aggregate with a version column, an event-sourced
// aggregate with snapshots.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cleave/cleave.hpp>
#include <cleave/write/event_sourced.hpp>
#include <cleave/write/state_table.hpp>

namespace styles {

// ---- a transaction script: the handler runs SQL on its own tables ----
struct rename_product {
  std::string sku;
  std::string name;
};
CLEAVE_COMMAND(rename_product, "styles.rename_product", sku, name)

inline cleave::result<void> rename(const rename_product& c, cleave::write_context& tx) {
  if (tx.exec("update products set name = $2 where sku = $1", c.sku, c.name) == 0)
    return cleave::not_found("no product " + c.sku);
  return {};
}

// ---- a state-based aggregate with a version column ----
struct cart {
  std::vector<std::string> skus;
  std::int64_t limit = 3;
};
CLEAVE_RECORD(cart, skus, limit)

inline const cleave::state_table<cart> carts{"carts"};

struct add_to_cart {
  std::string cart_id;
  std::string sku;
  using response = std::int64_t;  // the cart's version after it
};
CLEAVE_COMMAND(add_to_cart, "styles.add_to_cart", cart_id, sku)

inline cleave::result<std::int64_t> add(const add_to_cart& c, cleave::write_context& tx) {
  auto loaded = carts.load(tx, c.cart_id);
  if (static_cast<std::int64_t>(loaded.state.skus.size()) >= loaded.state.limit)
    return cleave::rejected("the cart is full");
  loaded.state.skus.push_back(c.sku);
  return static_cast<std::int64_t>(carts.save(tx, c.cart_id, loaded));
}

// ---- an event-sourced aggregate ----
struct account_opened {
  std::string id;
};
CLEAVE_EVENT(account_opened, "styles.account_opened", id)
struct money_deposited {
  std::string id;
  std::int64_t amount = 0;
};
CLEAVE_EVENT(money_deposited, "styles.money_deposited", id, amount)
struct money_withdrawn {
  std::string id;
  std::int64_t amount = 0;
};
CLEAVE_EVENT(money_withdrawn, "styles.money_withdrawn", id, amount)

struct account {
  bool open = false;
  std::int64_t balance = 0;
  std::int64_t folds = 0;  // how many events this instance folded (to see snapshots work)
  void apply(const account_opened&) { open = true, ++folds; }
  void apply(const money_deposited& e) { balance += e.amount, ++folds; }
  void apply(const money_withdrawn& e) { balance -= e.amount, ++folds; }
};
CLEAVE_RECORD(account, open, balance)

inline const auto accounts =
    cleave::event_sourced<account, account_opened, money_deposited, money_withdrawn>{}
        .snapshot_every(10);

struct withdraw {
  std::string id;
  std::int64_t amount = 0;
  using response = std::int64_t;  // the balance after it
};
CLEAVE_COMMAND(withdraw, "styles.withdraw", id, amount)

inline cleave::result<std::int64_t> withdraw_money(const withdraw& c, cleave::write_context& tx) {
  auto acc = accounts.load(tx, c.id);
  if (!acc.state.open) return cleave::not_found("no account " + c.id);
  if (acc.state.balance < c.amount) return cleave::rejected("insufficient funds");
  acc.emit(tx, money_withdrawn{c.id, c.amount});
  return acc.state.balance;
}

inline const cleave::migration schema[] = {
    {1, "products", "create table products(sku text primary key, name text not null)"},
};

template <class Backend>
struct write_styles : testing::Test {
  Backend backend;
  std::unique_ptr<cleave::store> db = backend.open();
  cleave::command_bus commands{db.get()};
  void SetUp() override {
    db->migrate("styles", schema);
    const std::string carts_sql = carts.create_sql();
    const cleave::migration more[] = {{2, "carts", carts_sql}};
    db->migrate("styles", more);
    commands.add(rename);
    commands.add(add);
    commands.add(withdraw_money);
  }
  // Runs `body` in a committed write transaction.
  template <class F>
  void write(F&& body) {
    auto& tx = db->begin_write({});
    cleave::write_context ctx(&tx, cleave::detail::no_meta);
    body(ctx);
    tx.commit();
  }
};

TYPED_TEST_SUITE_P(write_styles);

TYPED_TEST_P(write_styles, a_transaction_script_changes_its_tables) {
  this->write([](cleave::write_context& tx) {
    tx.exec("insert into products(sku, name) values ('p1', 'Old')");
  });
  EXPECT_TRUE(this->commands.send(rename_product{"p1", "New"}));
  auto missing = this->commands.send(rename_product{"p2", "New"});
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().category, cleave::errc::not_found);
}

TYPED_TEST_P(write_styles, a_state_aggregate_saves_with_its_version_and_keeps_its_rule) {
  EXPECT_EQ(this->commands.send(add_to_cart{"c1", "a"}).value().value, 1);
  EXPECT_EQ(this->commands.send(add_to_cart{"c1", "b"}).value().value, 2);
  EXPECT_EQ(this->commands.send(add_to_cart{"c1", "c"}).value().value, 3);
  auto full = this->commands.send(add_to_cart{"c1", "d"});
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().message, "the cart is full");
}

TYPED_TEST_P(write_styles, a_state_aggregate_changed_meanwhile_is_a_conflict) {
  // Each failing save is the last statement of its transaction: on PostgreSQL an error ends it.
  // (Its insert may be queued and fail at the commit: the command's failure either way.)
  cleave::versioned<cart> stale;
  this->write([&](cleave::write_context& tx) {
    stale = carts.load(tx, "c2");
    carts.save(tx, "c2", stale);  // version 1 now
  });
  auto save_fails = [&](const cleave::versioned<cart>& v) -> std::string {
    auto& tx = this->db->begin_write({});
    cleave::write_context ctx(&tx, cleave::detail::no_meta);
    std::string why = "accepted";
    bool ended = false;
    try {
      carts.save(ctx, "c2", v);
      ended = true;
      tx.commit();
    } catch (const cleave::error_exception& e) {
      why = std::string(cleave::to_string(e.error().category)) + ": " + e.error().message;
    }
    if (!ended) tx.rollback();
    return why;
  };
  EXPECT_THAT(save_fails(stale), testing::StartsWith("conflict"));  // still thinks it is new
  auto wrong = stale;
  wrong.version = 7;  // a version that is not stored
  EXPECT_EQ(save_fails(wrong), "conflict: carts 'c2' changed since version 7");
}

TYPED_TEST_P(write_styles, an_event_sourced_aggregate_folds_its_stream) {
  this->write([](cleave::write_context& tx) {
    auto acc = accounts.load(tx, "a1");
    EXPECT_EQ(acc.version, 0u);
    acc.emit(tx, account_opened{"a1"});
    acc.emit(tx, money_deposited{"a1", 50});
  });
  EXPECT_EQ(this->commands.send(withdraw{"a1", 20}).value().value, 30);
  auto refused = this->commands.send(withdraw{"a1", 31});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().message, "insufficient funds");
  EXPECT_EQ(this->commands.send(withdraw{"nobody", 1}).error().category, cleave::errc::not_found);
}

TYPED_TEST_P(write_styles, an_event_sourced_aggregate_loads_from_its_snapshot) {
  this->write([](cleave::write_context& tx) {
    auto acc = accounts.load(tx, "a2");
    acc.emit(tx, account_opened{"a2"});
    for (int i = 0; i < 11; ++i) acc.emit(tx, money_deposited{"a2", 1});  // 12 events
  });
  this->write([](cleave::write_context& tx) {
    auto acc = accounts.load(tx, "a2");
    EXPECT_EQ(acc.version, 12u);
    EXPECT_EQ(acc.state.balance, 11);
    EXPECT_EQ(acc.state.folds, 2) << "it folded more than the events after the snapshot at 10";
  });
}

// The account as a later release has it: a member the old snapshots lack, so they are of another
// shape (snapshot_version 2).
struct account_v2 {
  std::int64_t balance = 0;
  std::int64_t deposits = 0;  // new: counted from the stream, never from an old snapshot
  std::int64_t folds = 0;
  void apply(const account_opened&) { ++folds; }
  void apply(const money_deposited& e) { balance += e.amount, ++deposits, ++folds; }
  void apply(const money_withdrawn& e) { balance -= e.amount, ++folds; }
};
CLEAVE_RECORD(account_v2, balance, deposits)

TYPED_TEST_P(write_styles, a_snapshot_of_another_shape_is_ignored_and_the_stream_folded) {
  this->write([](cleave::write_context& tx) {
    auto acc = accounts.load(tx, "a5");
    acc.emit(tx, account_opened{"a5"});
    for (int i = 0; i < 11; ++i) acc.emit(tx, money_deposited{"a5", 1});  // a snapshot at 10
  });
  const auto accounts_v2 =
      cleave::event_sourced<account_v2, account_opened, money_deposited, money_withdrawn>{}
          .snapshot_every(10)
          .snapshot_version(2);
  this->write([&](cleave::write_context& tx) {
    auto acc = accounts_v2.load(tx, "a5");
    EXPECT_EQ(acc.version, 12u);
    EXPECT_EQ(acc.state.balance, 11);
    EXPECT_EQ(acc.state.deposits, 11) << "the new member came from the old snapshot, as 0";
    EXPECT_EQ(acc.state.folds, 12) << "the old snapshot was used";
    for (int i = 0; i < 8; ++i) acc.emit(tx, money_deposited{"a5", 1});  // a v2 snapshot at 20
  });
  this->write([&](cleave::write_context& tx) {
    auto acc = accounts_v2.load(tx, "a5");
    EXPECT_EQ(acc.state.deposits, 19);
    EXPECT_EQ(acc.state.folds, 0) << "its own shape's snapshot at 20 was not used";
    // And the first release, still running somewhere, ignores the new shape's snapshot.
    EXPECT_EQ(accounts.load(tx, "a5").state.balance, 19);
  });
}

TYPED_TEST_P(write_styles, an_event_sourced_aggregate_changed_meanwhile_is_a_conflict) {
  this->write(
      [](cleave::write_context& tx) { accounts.load(tx, "a3").emit(tx, account_opened{"a3"}); });
  auto& tx = this->db->begin_write({});
  cleave::write_context ctx(&tx, cleave::detail::no_meta);
  auto mine = accounts.load(ctx, "a3");
  auto theirs = accounts.load(ctx, "a3");
  theirs.emit(ctx, money_deposited{"a3", 5});
  try {
    mine.emit(ctx, money_deposited{"a3", 7});
    ADD_FAILURE() << "an append at a stale version was accepted";
  } catch (const cleave::error_exception& e) {
    EXPECT_EQ(e.error().category, cleave::errc::conflict);
  }
  tx.rollback();
}

REGISTER_TYPED_TEST_SUITE_P(write_styles, a_transaction_script_changes_its_tables,
                            a_state_aggregate_saves_with_its_version_and_keeps_its_rule,
                            a_state_aggregate_changed_meanwhile_is_a_conflict,
                            an_event_sourced_aggregate_folds_its_stream,
                            an_event_sourced_aggregate_loads_from_its_snapshot,
                            a_snapshot_of_another_shape_is_ignored_and_the_stream_folded,
                            an_event_sourced_aggregate_changed_meanwhile_is_a_conflict);

}  // namespace styles
