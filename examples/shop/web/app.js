// The shop's UI: plain fetch() calls to cleave's HTTP API. Each command's Cleave-Position is
// carried into the following queries as Cleave-Min-Position, so the page reads its own writes.
// Every command carries an Idempotency-Key, one per user action, so that a double click or a
// retry after a lost answer gets the first outcome again instead of a second effect. The order
// list and the best sellers are also live (EventSource on /queries/{name}/live): what another
// tab or another client does shows up without a reload.
"use strict";

let lastPosition = "";
const $ = (id) => document.getElementById(id);
const money = (cents) => (cents / 100).toFixed(2);
// Text for innerHTML: ids and names come from strangers (an order id is any text).
const esc = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
// crypto.randomUUID() exists only in secure contexts; the shop may be served over plain http.
const newKey = () => Array.from(crypto.getRandomValues(new Uint8Array(16)),
  (b) => b.toString(16).padStart(2, "0")).join("");

// A refusal the server answered; any other error (the network) leaves the outcome unknown.
class Refused extends Error {}

async function send(kind, name, body, idempotencyKey) {
  const headers = { "Content-Type": "application/json" };
  if (kind === "queries" && lastPosition) headers["Cleave-Min-Position"] = lastPosition;
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  const res = await fetch(`/${kind}/${name}`, { method: "POST", headers, body: JSON.stringify(body || {}) });
  const json = await res.json();
  if (!res.ok) throw new Refused(json.detail || json.title);
  if (kind === "commands" && json.position) {
    lastPosition = json.position;
    $("position").textContent = lastPosition;
  }
  return json;
}
const call = async (kind, name, body, idempotencyKey) => (await send(kind, name, body, idempotencyKey)).result;

// Log order of two positions ("<transaction>.<position>.<lsn>", hex): negative when a is older.
function compare(a, b) {
  const [ta, pa] = a.split(".").map((x) => BigInt("0x" + (x || "0")));
  const [tb, pb] = b.split(".").map((x) => BigInt("0x" + (x || "0")));
  return ta !== tb ? (ta < tb ? -1 : 1) : pa === pb ? 0 : pa < pb ? -1 : 1;
}

function say(text, ok) {
  $("message").textContent = text;
  $("message").className = ok ? "ok" : "error";
}

async function loadProducts() {
  const products = await call("queries", "shop.list_products");
  $("products").querySelector("tbody").innerHTML = products.map((p) => `
    <tr data-product="${esc(p.id)}">
      <td>${esc(p.name)}</td><td class="num">${money(p.price_cents)}</td>
      <td class="num stock">${esc(p.stock)}</td>
      <td class="num"><input type="number" min="0" value="0" aria-label="quantity of ${esc(p.name)}"></td>
    </tr>`).join("");
}

// Live stock: only the numbers change, so what the user is typing stays.
function renderStock(products) {
  for (const p of products) {
    const cell = document.querySelector(`#products tr[data-product="${CSS.escape(p.id)}"] .stock`);
    if (cell) cell.textContent = p.stock;
  }
}

async function loadCustomers() {
  const customers = await call("queries", "shop.list_customers");
  $("customer").innerHTML = customers.map((c) => `<option value="${esc(c.id)}">${esc(c.name)}</option>`).join("");
}

function renderOrders(orders) {
  $("orders").querySelector("tbody").innerHTML = orders.map((o) => `
    <tr class="clickable ${esc(o.status)}" data-order="${esc(o.order_id)}">
      <td>${esc(o.order_id)}</td><td class="status">${esc(o.status)}</td><td class="num">${money(o.total_cents)}</td>
      <td class="deadline">${o.status === "placed" && o.pay_by ? `pay by ${new Date(o.pay_by).toLocaleTimeString()}` : ""}</td>
      <td>${o.status === "placed" ? `<button class="pay" data-order="${esc(o.order_id)}">Pay</button>
        <button class="secondary cancel" data-order="${esc(o.order_id)}">Cancel</button>` : ""}</td>
    </tr>`).join("");
}

function renderTop(top) {
  $("top").innerHTML = top.map((t) => `<li>${esc(t.name)} — ${esc(t.units_sold)} sold</li>`).join("");
}

// A live query: `render` gets its result now and again whenever it changes. The browser
// reconnects by itself after a drop, sending the last event's id (Last-Event-ID), and the server
// sends only what moved past it. An answer older than the one on screen (read through this
// page's own command) is skipped.
const live = {};
let followed = null;  // the customer whose orders are followed
const shown = {};  // key -> the position of the answer on screen
function show(key, answer, render) {
  if (shown[key] && answer.position && compare(answer.position, shown[key]) < 0) return;
  shown[key] = answer.position;
  render(answer.result);
}
function follow(key, url, render) {
  live[key]?.close();
  const source = new EventSource(url);
  source.addEventListener("result", (event) => show(key, JSON.parse(event.data), render));
  live[key] = source;
}

async function loadOrders() {
  const customer = $("customer").value;
  $("customer-name").textContent = $("customer").selectedOptions[0]?.textContent || "";
  if (followed !== customer) delete shown.orders;
  show("orders", await send("queries", "shop.customer_orders", { customer_id: customer }), renderOrders);
  show("top", await send("queries", "shop.top_products", { limit: 3 }), renderTop);
  if (followed !== customer) {
    followed = customer;
    follow("orders", `/queries/shop.customer_orders/live?customer_id=${encodeURIComponent(customer)}`, renderOrders);
  }
  if (!live.top) follow("top", "/queries/shop.top_products/live?limit=3", renderTop);
  if (!live.stock) follow("stock", "/queries/shop.list_products/live", renderStock);
}

async function showSummary(orderId) {
  const s = await call("queries", "shop.order_summary", { order_id: orderId });
  $("summary").hidden = false;
  $("summary-id").textContent = `${s.order_id} (${s.status})`;
  $("summary-buyer").textContent = `for ${s.buyer.name}, ${money(s.total_cents)} in all`;
  $("summary-lines").innerHTML = s.lines.map((l) => `<li>${l.quantity} × ${esc(l.product_name)} at ${money(l.price_cents)}</li>`).join("");
}

async function refresh() {
  await loadProducts();
  await loadOrders();
}

// The order being placed: its id and key stay the same for every click on the same choice until
// the choice changes or the server refuses it, so clicking twice places it once.
let placing = null;
const forgetPlacing = () => { placing = null; };
$("products").addEventListener("input", forgetPlacing);
$("customer").addEventListener("change", forgetPlacing);

$("place").addEventListener("click", async () => {
  const lines = [...document.querySelectorAll("#products tbody tr")]
    .map((tr) => ({ product_id: tr.dataset.product, quantity: Number(tr.querySelector("input").value) }))
    .filter((l) => l.quantity > 0);
  if (lines.length === 0) return say("Choose how many of something first.", false);
  const order = { customer_id: $("customer").value, lines };
  const choice = JSON.stringify(order);
  if (placing?.choice !== choice) placing = { choice, orderId: "o-" + Date.now().toString(36), key: newKey() };
  const action = placing;
  try {
    const placed = await call("commands", "shop.place_order", { order_id: action.orderId, ...order }, action.key);
    say(`Placed ${placed.order_id}: ${money(placed.total_cents)}.`, true);
    await refresh();
    await showSummary(placed.order_id);
  } catch (e) {
    if (e instanceof Refused && placing === action) placing = null;  // a new try is a new action
    say(e.message, false);
  }
});

$("orders").addEventListener("click", async (event) => {
  const cancel = event.target.closest("button.cancel");
  const pay = event.target.closest("button.pay");
  const row = event.target.closest("tr[data-order]");
  try {
    if (pay) {
      // Paid once, like cancelled once: the order's id makes the key.
      await call("commands", "shop.pay_order", { order_id: pay.dataset.order }, `pay-${pay.dataset.order}`);
      say(`Paid ${pay.dataset.order}.`, true);
      await refresh();
      await showSummary(pay.dataset.order);
    } else if (cancel) {
      // An order is cancelled once: its id makes the key, so a second click gets the same answer.
      await call("commands", "shop.cancel_order", { order_id: cancel.dataset.order }, `cancel-${cancel.dataset.order}`);
      say(`Cancelled ${cancel.dataset.order}; its stock is back.`, true);
      await refresh();
      await showSummary(cancel.dataset.order);
    } else if (row) {
      await showSummary(row.dataset.order);
    }
  } catch (e) {
    say(e.message, false);
  }
});

$("customer").addEventListener("change", loadOrders);

(async () => {
  try {
    await loadCustomers();
    await refresh();
  } catch (e) {
    say(`Could not load the shop: ${e.message}`, false);
  }
})();
