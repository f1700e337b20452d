#include "shop.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <map>
#include <numeric>

#include <fmt/format.h>

namespace shop {

namespace {

constexpr cleave::migration schema[] = {
    {1, "customers, products, orders",
     "create table customers(id text primary key, name text not null, email text);"
     "create table products(id text primary key, name text not null,"
     "  price_cents bigint not null check (price_cents >= 0),"
     "  stock bigint not null check (stock >= 0));"
     "create table orders(id text primary key, customer_id text not null references customers(id),"
     "  status text not null, total_cents bigint not null, placed_at bigint not null);"
     "create table order_lines(order_id text not null references orders(id),"
     "  product_id text not null references products(id), quantity bigint not null,"
     "  price_cents bigint not null, primary key (order_id, product_id));"
     "create index order_lines_product on order_lines(product_id);"
     "create index orders_customer on orders(customer_id);"},
    {2, "payments", "alter table orders add column paid_at bigint"},
};

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// ---- command handlers: each runs in one write transaction ----

cleave::result<void> on_register_customer(const register_customer& c, cleave::write_context& tx) {
  tx.exec("insert into customers(id, name, email) values ($1, $2, $3)", c.id, c.name, c.email);
  tx.emit(c.id, customer_registered{c.id, c.name});
  return {};
}

cleave::result<void> on_add_product(const add_product& c, cleave::write_context& tx) {
  tx.exec("insert into products(id, name, price_cents, stock) values ($1, $2, $3, $4)", c.id,
          c.name, c.price_cents, c.stock);
  tx.emit(c.id, product_added{c.id, c.name, c.price_cents, c.stock});
  return {};
}

cleave::result<std::int64_t> on_restock(const restock& c, cleave::write_context& tx) {
  auto stock = tx.one<std::int64_t>("select stock from products where id = $1", c.product_id);
  if (!stock) return cleave::not_found(fmt::format("no product '{}'", c.product_id));
  if (*stock > max_stock - c.quantity)
    return cleave::rejected(
        fmt::format("'{}' would hold more than {} in stock", c.product_id, max_stock));
  tx.exec("update products set stock = stock + $2 where id = $1", c.product_id, c.quantity);
  tx.emit(c.product_id, product_restocked{c.product_id, c.quantity});
  return *stock + c.quantity;
}

// A rule across aggregates: every line's product must have the stock, or nothing is placed.
cleave::result<placed_order> on_place_order(const place_order& c, cleave::write_context& tx) {
  auto buyer =
      tx.one<customer>("select id, name, email from customers where id = $1", c.customer_id);
  if (!buyer) return cleave::not_found(fmt::format("no customer '{}'", c.customer_id));
  // Product rows are locked in one order (by id) whatever the order of the lines, so that two
  // orders over the same products never wait for each other in a cycle (a deadlock).
  std::vector<std::size_t> by_product(c.lines.size());
  std::iota(by_product.begin(), by_product.end(), std::size_t{0});
  std::sort(by_product.begin(), by_product.end(), [&](std::size_t a, std::size_t b) {
    return c.lines[a].product_id < c.lines[b].product_id;
  });
  std::int64_t total = 0;
  std::vector<placed_line> lines(c.lines.size());
  for (const std::size_t i : by_product) {
    const auto& line = c.lines[i];
    auto p = tx.one<product>("select id, name, price_cents, stock from products where id = $1",
                             line.product_id);
    if (!p) return cleave::not_found(fmt::format("no product '{}'", line.product_id));
    if (p->stock < line.quantity)
      return cleave::rejected(fmt::format("not enough stock of '{}': {} left, {} wanted", p->name,
                                          p->stock, line.quantity));
    std::int64_t line_total = 0;
    if (__builtin_mul_overflow(p->price_cents, line.quantity, &line_total) ||
        __builtin_add_overflow(total, line_total, &total))
      return cleave::invalid(fmt::format("lines[{}].quantity", i),
                             "the order's total would be larger than the shop can count");
    tx.exec("update products set stock = stock - $2 where id = $1", line.product_id, line.quantity);
    lines[i] = {p->id, p->name, line.quantity, p->price_cents};
  }
  const auto placed_at = now_ms();
  tx.exec(
      "insert into orders(id, customer_id, status, total_cents, placed_at) values ($1, $2, "
      "'placed', $3, $4)",
      c.order_id, c.customer_id, total, placed_at);
  for (const auto& line : lines)
    tx.exec(
        "insert into order_lines(order_id, product_id, quantity, price_cents) values ($1, $2, $3, "
        "$4)",
        c.order_id, line.product_id, line.quantity, line.price_cents);
  tx.emit(c.order_id, order_placed{c.order_id, c.customer_id, lines, total, buyer->name,
                                   buyer->email, placed_at});
  return placed_order{c.order_id, total};
}

struct order_state {
  std::string status;
  std::optional<std::int64_t> paid_at;
};
CLEAVE_RECORD(order_state, status, paid_at)

cleave::result<void> on_cancel_order(const cancel_order& c, cleave::write_context& tx) {
  auto order = tx.one<order_state>("select status, paid_at from orders where id = $1", c.order_id);
  if (!order) return cleave::not_found(fmt::format("no order '{}'", c.order_id));
  if (order->status == "cancelled")
    return cleave::rejected(fmt::format("order '{}' is already cancelled", c.order_id));
  if (order->paid_at)
    return cleave::rejected(
        fmt::format("order '{}' is paid: it is no longer cancelled", c.order_id));
  tx.exec(
      "update products set stock = stock + (select quantity from order_lines l where l.order_id = "
      "$1 "
      "and l.product_id = products.id) where id in (select product_id from order_lines where "
      "order_id = $1)",
      c.order_id);
  tx.exec("update orders set status = 'cancelled' where id = $1", c.order_id);
  tx.emit(c.order_id, order_cancelled{c.order_id});
  return {};
}

// Pays an order once: an order cancelled (by its buyer, or for want of payment) is not paid.
cleave::result<void> on_pay_order(const pay_order& c, cleave::write_context& tx) {
  auto order = tx.one<order_state>("select status, paid_at from orders where id = $1", c.order_id);
  if (!order) return cleave::not_found(fmt::format("no order '{}'", c.order_id));
  if (order->status == "cancelled")
    return cleave::rejected(fmt::format("order '{}' is cancelled: it cannot be paid", c.order_id));
  if (order->paid_at)
    return cleave::rejected(fmt::format("order '{}' is already paid", c.order_id));
  const auto paid_at = now_ms();
  tx.exec("update orders set paid_at = $2 where id = $1", c.order_id, paid_at);
  tx.emit(c.order_id, order_paid{c.order_id, paid_at});
  return {};
}

// ---- the payment deadline: a process manager that, when an order is placed, schedules its
// cancellation after payment_timeout, and takes it back when the order is paid or cancelled ----

}  // namespace

cleave::process_manager<awaiting_payment> order_payments(std::chrono::milliseconds timeout) {
  cleave::process_manager<awaiting_payment> m{"order_payments"};
  // The schedule's key is the order's id (keys are the manager's own).
  m.on(&order_placed::order_id,
       [timeout](const order_placed& e, awaiting_payment& s, cleave::process_context& p) {
         s.order_id = e.order_id;
         // From when it was placed: a manager that was down does not move the deadline.
         const auto placed =
             std::chrono::system_clock::time_point(std::chrono::milliseconds(e.placed_at));
         p.schedule(placed + timeout, cancel_order{e.order_id}, e.order_id);
       })
      .on(&order_paid::order_id,
          [](const order_paid& e, awaiting_payment&, cleave::process_context& p) {
            p.cancel_schedule(e.order_id);
            p.complete();
          })
      .on(&order_cancelled::order_id,
          [](const order_cancelled& e, awaiting_payment&, cleave::process_context& p) {
            p.cancel_schedule(e.order_id);
            p.complete();
          })
      // Paid (or cancelled) before the deadline's cancellation ran, or gone: nothing is left to
      // do. (A cancellation refused for want of a role stays in the schedule table as failed.)
      .on_rejected<cancel_order>([](const cancel_order&, const cleave::error&, awaiting_payment&,
                                    cleave::process_context& p) { p.complete(); });
  return m;
}

namespace {

// ---- query handlers: read-only ----

cleave::result<product> on_product_stock(const product_stock& q, const cleave::read_context& db) {
  auto p = db.one<product>("select id, name, price_cents, stock from products where id = $1",
                           q.product_id);
  if (!p) return cleave::not_found(fmt::format("no product '{}'", q.product_id));
  return p;
}

cleave::result<std::vector<product>> on_list_products(const list_products&,
                                                      const cleave::read_context& db) {
  return db.many<product>("select id, name, price_cents, stock from products order by name");
}

cleave::result<std::vector<customer>> on_list_customers(const list_customers&,
                                                        const cleave::read_context& db) {
  return db.many<customer>("select id, name, email from customers order by name");
}

// ---- the order_summaries view: one row per order, with its buyer and lines, kept by an async
// projection; the two queries below read it ----

struct summary_row {
  std::string order_id, status, customer_id, customer_name;
  std::optional<std::string> customer_email;
  std::int64_t total_cents = 0;
  std::string lines;  // JSON: [summary_line]
};
CLEAVE_RECORD(summary_row, order_id, status, customer_id, customer_name, customer_email,
              total_cents, lines)

cleave::result<order_view> on_order_summary(const order_summary& q,
                                            const cleave::read_context& db) {
  auto row = db.one<summary_row>(
      "select order_id, status, customer_id, customer_name, customer_email, total_cents, lines "
      "from order_summaries where order_id = $1",
      q.order_id);
  if (!row) return cleave::not_found(fmt::format("no order '{}'", q.order_id));
  auto lines = cleave::parse_json(row->lines);
  if (!lines) return std::unexpected(lines.error());
  auto view = cleave::from_json<order_view>(
      {{"order_id", row->order_id},
       {"status", row->status},
       {"total_cents", row->total_cents},
       {"buyer",
        cleave::to_json(customer{row->customer_id, row->customer_name, row->customer_email})},
       {"lines", std::move(*lines)}});
  return view;
}

cleave::result<std::vector<order_row>> on_customer_orders(const customer_orders& q,
                                                          const cleave::read_context& db) {
  return db.many<order_row>(
      "select s.order_id, s.status, s.total_cents, s.placed_at, d.due_ms as pay_by "
      "from order_summaries s left join cleave_schedules d on d.key = 'order_payments:' || "
      "s.order_id and d.state = 'pending' where s.customer_id = $1 "
      "order by s.placed_at desc, s.order_id",
      q.customer_id);
}

cleave::projection order_summaries() {
  cleave::projection p{"order_summaries"};
  p.schema(
       "create table {view}(order_id text primary key, customer_id text not null,"
       "  customer_name text not null, customer_email text, status text not null,"
       "  total_cents bigint not null, placed_at bigint not null, lines text not null);"
       "create index {view}_by_customer on {view}(customer_id, placed_at)")
      .on([](const order_placed& e, cleave::view_context& v) {
        std::vector<summary_line> lines;
        lines.reserve(e.lines.size());
        for (const auto& l : e.lines)
          lines.push_back({l.product_id, l.product_name, l.quantity, l.price_cents});
        std::sort(lines.begin(), lines.end(),
                  [](const auto& a, const auto& b) { return a.product_name < b.product_name; });
        v.exec(
            "insert into {view}(order_id, customer_id, customer_name, customer_email, status, "
            "total_cents, placed_at, lines) values ($1, $2, $3, $4, 'placed', $5, $6, $7)",
            e.order_id, e.customer_id, e.customer_name, e.customer_email, e.total_cents,
            e.placed_at, cleave::to_json(lines).dump());
      })
      .on([](const order_cancelled& e, cleave::view_context& v) {
        v.exec("update {view} set status = 'cancelled' where order_id = $1", e.order_id);
      })
      .on([](const order_paid& e, cleave::view_context& v) {
        v.exec("update {view} set status = 'paid' where order_id = $1", e.order_id);
      });
  return p;
}

// Best sellers: a database materialized view over the write tables, refreshed by the projector
// (after 50 orders or 2 s, or at once when a read waits for it).
cleave::result<std::vector<product_sales>> on_top_products(const top_products& q,
                                                           const cleave::read_context& db) {
  return db.many<product_sales>(
      "select product_id, name, units_sold from top_products order by units_sold desc, name "
      "limit $1",
      q.limit.value_or(5));
}

cleave::projection top_products_view() {
  cleave::projection p{"top_products"};
  p.materialized(
      "select p.id as product_id, p.name as name, cast(sum(l.quantity) as bigint) as units_sold "
      "from order_lines l join orders o on o.id = l.order_id join products p on p.id = "
      "l.product_id where o.status = 'placed' group by p.id, p.name",
      "product_id", {.after_events = 50, .after = std::chrono::seconds(2)});
  return p;
}
}  // namespace

cleave::result<void> register_customer::validate() const {
  if (id.empty()) return cleave::invalid("id", "must not be empty");
  if (name.empty()) return cleave::invalid("name", "must not be empty");
  return {};
}

cleave::result<void> add_product::validate() const {
  if (id.empty()) return cleave::invalid("id", "must not be empty");
  if (price_cents < 0 || price_cents > max_price_cents)
    return cleave::invalid("price_cents", fmt::format("must be from 0 to {}", max_price_cents));
  if (stock < 0 || stock > max_stock)
    return cleave::invalid("stock", fmt::format("must be from 0 to {}", max_stock));
  return {};
}

cleave::result<void> restock::validate() const {
  if (quantity <= 0 || quantity > max_quantity)
    return cleave::invalid("quantity", fmt::format("must be from 1 to {}", max_quantity));
  return {};
}

cleave::result<void> place_order::validate() const {
  if (order_id.empty()) return cleave::invalid("order_id", "must not be empty");
  if (lines.empty()) return cleave::invalid("lines", "an order needs at least one line");
  if (lines.size() > max_order_lines)
    return cleave::invalid("lines", fmt::format("an order has at most {} lines", max_order_lines));
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].quantity <= 0 || lines[i].quantity > max_quantity)
      return cleave::invalid(fmt::format("lines[{}].quantity", i),
                             fmt::format("must be from 1 to {}", max_quantity));
    for (std::size_t j = 0; j < i; ++j)
      if (lines[j].product_id == lines[i].product_id)
        return cleave::invalid(fmt::format("lines[{}].product_id", i),
                               "appears twice in the order");
  }
  return {};
}

void install(cleave::app& a) {
  a.add_migrations("shop", schema);
  auto& commands = a.commands();
  commands.use<cleave::validation>();
  commands.use<cleave::retry_on_conflict>();
  commands.add(on_register_customer);
  commands.add(on_add_product);
  commands.add(on_restock);
  commands.add(on_place_order);
  commands.add(on_cancel_order);
  commands.add(on_pay_order);
  auto& queries = a.queries();
  queries.use<cleave::validation>();
  queries.add(on_product_stock);
  queries.add(on_list_products);
  queries.add(on_list_customers);
  queries.add(on_order_summary);
  queries.add(on_customer_orders);
  queries.add(on_top_products);
  a.add_projection(order_summaries());
  a.reads("shop.order_summary", {"order_summaries"});
  // (and the payment deadlines the process manager keeps)
  a.reads("shop.customer_orders", {"order_summaries", "order_payments"});
  a.add_projection(top_products_view());
  a.reads("shop.top_products", {"top_products"});
  a.add_process_manager(order_payments(payment_timeout(a.config())));
}

std::chrono::milliseconds payment_timeout(const cleave::app_config& config) {
  std::int64_t ms = std::int64_t{15} * 60 * 1000;
  if (auto it = config.settings.find("payment_timeout_ms"); it != config.settings.end()) {
    if (!it->is_number_integer() || it->get<std::int64_t>() <= 0)
      throw cleave::error_exception(
          cleave::error{cleave::errc::validation,
                        "settings.payment_timeout_ms must be a positive number of milliseconds",
                        {}});
    ms = it->get<std::int64_t>();
  }
  if (const char* v = std::getenv("SHOP_PAYMENT_TIMEOUT_MS"); v && *v) {
    std::int64_t parsed = 0;
    const std::string_view text = v;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), parsed);
    if (ec != std::errc{} || end != text.data() + text.size() || parsed <= 0)
      throw cleave::error_exception(
          cleave::error{cleave::errc::validation,
                        "SHOP_PAYMENT_TIMEOUT_MS must be a positive number of milliseconds",
                        {}});
    ms = parsed;
  }
  return std::chrono::milliseconds(ms);
}

void seed_demo_data(cleave::app& a) {
  // From the primary: a standby that has not replayed the products yet must not make it seed
  // them twice.
  cleave::request_meta primary;
  primary.consistency = cleave::strong();
  if (!a.queries().ask(list_products{}, primary).value_or(std::vector<product>{}).empty()) return;
  auto& c = a.commands();
  (void)c.send(register_customer{"ada", "Ada Lovelace", "ada@example.com"});
  (void)c.send(register_customer{"grace", "Grace Hopper", std::nullopt});
  (void)c.send(register_customer{"alan", "Alan Turing", std::nullopt});
  (void)c.send(add_product{"kettle", "Kettle", 2499, 12});
  (void)c.send(add_product{"teapot", "Teapot", 1899, 8});
  (void)c.send(add_product{"mug", "Mug", 599, 40});
  (void)c.send(add_product{"tea", "Darjeeling tea, 100 g", 899, 25});
  (void)c.send(add_product{"cosy", "Tea cosy", 1299, 3});
}

}  // namespace shop
