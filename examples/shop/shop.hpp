#pragma once
// The reference application: customers, products with stock, orders. Stock and the lists read the
// write tables (one model where one model is enough); order summaries and a customer's orders
// come from a view kept by an async projection (order_summaries); best sellers from a database
// materialized view (top_products).

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <cleave/app/app.hpp>
#include <cleave/cleave.hpp>

namespace shop {

// The shop's bounds, checked by validate(): with them an order's total (at most
// max_order_lines * max_quantity * max_price_cents) fits an int64 with room to spare.
inline constexpr std::int64_t max_price_cents = 1'000'000'000;  // ten million in money
inline constexpr std::int64_t max_quantity = 1'000'000;         // of one product in one command
inline constexpr std::int64_t max_stock = 1'000'000'000'000;
inline constexpr std::size_t max_order_lines = 100;

// ---- commands ----
struct register_customer {
  std::string id;
  std::string name;
  std::optional<std::string> email;
  cleave::result<void> validate() const;
};
CLEAVE_COMMAND(register_customer, "shop.register_customer", id, name, email)

struct add_product {
  std::string id;
  std::string name;
  std::int64_t price_cents = 0;
  std::int64_t stock = 0;
  cleave::result<void> validate() const;
};
CLEAVE_COMMAND(add_product, "shop.add_product", id, name, price_cents, stock)

struct restock {
  std::string product_id;
  std::int64_t quantity = 0;
  using response = std::int64_t;  // the stock after it
  cleave::result<void> validate() const;
};
CLEAVE_COMMAND(restock, "shop.restock", product_id, quantity)

struct order_line {
  std::string product_id;
  std::int64_t quantity = 0;
};
CLEAVE_RECORD(order_line, product_id, quantity)

struct placed_order {
  std::string order_id;
  std::int64_t total_cents = 0;
};
CLEAVE_RECORD(placed_order, order_id, total_cents)

struct place_order {
  std::string order_id;
  std::string customer_id;
  std::vector<order_line> lines;
  using response = placed_order;
  cleave::result<void> validate() const;
};
CLEAVE_COMMAND(place_order, "shop.place_order", order_id, customer_id, lines)

struct cancel_order {
  std::string order_id;
};
CLEAVE_COMMAND(cancel_order, "shop.cancel_order", order_id)

// Pays a placed order (before its payment deadline, after which the shop cancels it).
struct pay_order {
  std::string order_id;
};
CLEAVE_COMMAND(pay_order, "shop.pay_order", order_id)

// ---- events ----
struct customer_registered {
  std::string id;
  std::string name;
};
CLEAVE_EVENT(customer_registered, "shop.customer_registered", id, name)
struct product_added {
  std::string id;
  std::string name;
  std::int64_t price_cents = 0;
  std::int64_t stock = 0;
};
CLEAVE_EVENT(product_added, "shop.product_added", id, name, price_cents, stock)
struct product_restocked {
  std::string product_id;
  std::int64_t quantity = 0;
};
CLEAVE_EVENT(product_restocked, "shop.product_restocked", product_id, quantity)
// What the order was at the time: names and prices travel with the event, so the views need no
// other source (older events without them decode with empty names and zero prices).
struct placed_line {
  std::string product_id;
  std::string product_name;
  std::int64_t quantity = 0;
  std::int64_t price_cents = 0;
};
CLEAVE_RECORD(placed_line, product_id, product_name, quantity, price_cents)
struct order_placed {
  std::string order_id;
  std::string customer_id;
  std::vector<placed_line> lines;
  std::int64_t total_cents = 0;
  std::string customer_name;
  std::optional<std::string> customer_email;
  std::int64_t placed_at = 0;
};
CLEAVE_EVENT(order_placed, "shop.order_placed", order_id, customer_id, lines, total_cents,
             customer_name, customer_email, placed_at)
struct order_cancelled {
  std::string order_id;
};
CLEAVE_EVENT(order_cancelled, "shop.order_cancelled", order_id)
struct order_paid {
  std::string order_id;
  std::int64_t paid_at = 0;
};
CLEAVE_EVENT(order_paid, "shop.order_paid", order_id, paid_at)

// ---- queries ----
struct product {
  std::string id;
  std::string name;
  std::int64_t price_cents = 0;
  std::int64_t stock = 0;
};
CLEAVE_RECORD(product, id, name, price_cents, stock)

struct product_stock {
  std::string product_id;
  using response = product;
  // Its answer is what its handler reads from the database, nothing else: the HTTP server may
  // give it again, without a read, while nothing has been committed since.
  static constexpr bool cache_answers = true;
};
CLEAVE_QUERY(product_stock, "shop.product_stock", product_id)

struct list_products {
  using response = std::vector<product>;
  static constexpr bool cache_answers = true;
};
CLEAVE_QUERY(list_products, "shop.list_products")

struct customer {
  std::string id;
  std::string name;
  std::optional<std::string> email;
};
CLEAVE_RECORD(customer, id, name, email)

struct list_customers {
  using response = std::vector<customer>;
};
CLEAVE_QUERY(list_customers, "shop.list_customers")

struct summary_line {
  std::string product_id;
  std::string product_name;
  std::int64_t quantity = 0;
  std::int64_t price_cents = 0;
};
CLEAVE_RECORD(summary_line, product_id, product_name, quantity, price_cents)

struct order_view {
  std::string order_id;
  std::string status;
  std::int64_t total_cents = 0;
  customer buyer;
  std::vector<summary_line> lines;
};
CLEAVE_RECORD(order_view, order_id, status, total_cents, buyer, lines)

struct order_summary {
  std::string order_id;
  using response = order_view;
};
CLEAVE_QUERY(order_summary, "shop.order_summary", order_id)

struct order_row {
  std::string order_id;
  std::string status;
  std::int64_t total_cents = 0;
  std::int64_t placed_at = 0;
  // When an unpaid order is cancelled unless paid first (Unix ms); absent once paid or cancelled.
  std::optional<std::int64_t> pay_by;
};
CLEAVE_RECORD(order_row, order_id, status, total_cents, placed_at, pay_by)

struct customer_orders {
  std::string customer_id;
  using response = std::vector<order_row>;
};
CLEAVE_QUERY(customer_orders, "shop.customer_orders", customer_id)

struct product_sales {
  std::string product_id;
  std::string name;
  std::int64_t units_sold = 0;
};
CLEAVE_RECORD(product_sales, product_id, name, units_sold)

struct top_products {
  std::optional<std::int64_t> limit;
  using response = std::vector<product_sales>;
};
CLEAVE_QUERY(top_products, "shop.top_products", limit)

// How long a placed order waits for its payment before the shop cancels it (returning its
// stock): the config file's "settings": {"payment_timeout_ms": N}, or SHOP_PAYMENT_TIMEOUT_MS;
// 15 minutes unless set.
std::chrono::milliseconds payment_timeout(const cleave::app_config& config);

// What a process manager remembers of an order waiting for its payment.
struct awaiting_payment {
  std::string order_id;
};
CLEAVE_RECORD(awaiting_payment, order_id)

// The process manager "order_payments": when an order is placed it schedules its cancellation
// (`cancel_order`, returning its stock) after `timeout`, under the order's id as the key, and takes
// it back when the order is paid or cancelled first.
cleave::process_manager<awaiting_payment> order_payments(std::chrono::milliseconds timeout);

// Registers the shop's handlers, migrations and its payment process manager on `a`.
void install(cleave::app& a);
// Adds demo customers and products when the shop has none.
void seed_demo_data(cleave::app& a);

}  // namespace shop
