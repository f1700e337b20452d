// The shop's web UI in a real browser: place an order, see it in the order view, cancel it; pay
// one before its deadline, and see one left unpaid cancelled at its deadline.
// Run by ctest (shop_ui_e2e) with SHOP_BIN naming the shop executable.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const shopBin = process.env.SHOP_BIN;
let port = 0; // the running shop's: startShop() picks it

// A port the system has just given out and taken back.
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.on("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port: free } = probe.address();
      probe.close(() => resolve(free));
    });
  });
}

// Starts the shop on a free port. Another process may take the port between the probe and the
// shop's bind (a random one, as before, could be some connection's local port): a shop that
// exits at once is started again on another, three times at most.
async function startShop(dir, env = {}) {
  for (let attempt = 1; ; ++attempt) {
    port = await freePort();
    try {
      return await spawnShop(dir, env);
    } catch (e) {
      if (attempt >= 3 || !e.message.startsWith("shop exited")) throw e;
    }
  }
}

async function spawnShop(dir, env) {
  const shop = spawn(shopBin, ["serve"], {
    cwd: dir,
    env: { ...process.env, CLEAVE_LISTEN: `127.0.0.1:${port}`, CLEAVE_LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("shop did not start")), 15000);
    shop.stdout.on("data", (chunk) => {
      if (String(chunk).includes("listening on")) {
        clearTimeout(timer);
        resolve();
      }
    });
    shop.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`shop exited with ${code}`));
    });
  });
  return shop;
}

function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

test("place an order in the UI and see it in the order view", async () => {
  assert.ok(shopBin, "SHOP_BIN must name the shop executable");
  const dir = mkdtempSync(join(tmpdir(), "cleave-e2e-"));
  const shop = await startShop(dir);
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.waitForSelector("#products tbody tr");
    const stockBefore = Number(await page.textContent('#products tr[data-product="teapot"] .stock'));
    await page.selectOption("#customer", "grace");
    await page.fill('#products tr[data-product="teapot"] input', "2");
    await page.click("#place");

    await page.waitForSelector("#message.ok");
    assert.match(await page.textContent("#message"), /Placed o-/);
    // The order view shows it, read through the command's position.
    await page.waitForSelector("#orders tbody tr[data-order]");
    assert.equal(await page.textContent("#orders tbody tr .status"), "placed");
    await page.waitForFunction(() => /2 × Teapot/.test(document.querySelector("#summary-lines")?.textContent || ""));
    assert.notEqual(await page.textContent("#position"), "none yet");
    assert.equal(Number(await page.textContent('#products tr[data-product="teapot"] .stock')), stockBefore - 2);

    // A refused order says why and changes nothing.
    await page.fill('#products tr[data-product="cosy"] input', "50");
    await page.click("#place");
    await page.waitForSelector("#message.error");
    assert.match(await page.textContent("#message"), /not enough stock/);

    // Cancelling returns the stock.
    await page.fill('#products tr[data-product="cosy"] input', "0");
    await page.click("#orders button.cancel");
    await page.waitForFunction(() => document.querySelector("#orders tbody tr .status")?.textContent === "cancelled");
    assert.equal(Number(await page.textContent('#products tr[data-product="teapot"] .stock')), stockBefore);
    await page.screenshot({ path: join(process.env.E2E_OUT || dir, "shop-e2e.png") });

    // The admin page: the order view is current, and a rebuild swaps a fresh copy in.
    await page.goto(`http://127.0.0.1:${port}/admin.html`);
    await page.waitForSelector('#projections tr[data-projection="order_summaries"]');
    await page.waitForFunction(() =>
      document.querySelector('#projections tr[data-projection="order_summaries"] .lag-events')?.textContent === "0");
    await page.click('#projections tr[data-projection="order_summaries"] button.rebuild-button');
    await page.waitForFunction(() =>
      /swapped/.test(document.querySelector('#projections tr[data-projection="order_summaries"] .rebuild')?.textContent || ""),
      null, { timeout: 15000 });
    await page.screenshot({ path: join(process.env.E2E_OUT || dir, "shop-admin-e2e.png") });
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.selectOption("#customer", "grace");
    await page.waitForFunction(() => document.querySelector("#orders tbody tr .status")?.textContent === "cancelled");
  } finally {
    await browser.close();
    shop.kill("SIGTERM");
    await new Promise((resolve) => shop.on("exit", resolve));
    rmSync(dir, { recursive: true, force: true });
  }
});

test("an order placed in another tab appears live, with the best sellers", async () => {
  const dir = mkdtempSync(join(tmpdir(), "cleave-e2e-"));
  const shop = await startShop(dir);
  const browser = await launchBrowser();
  try {
    const watcher = await browser.newPage();
    await watcher.goto(`http://127.0.0.1:${port}/`);
    await watcher.waitForSelector("#products tbody tr");
    await watcher.selectOption("#customer", "grace");
    await watcher.waitForFunction(() => document.querySelector("#customer-name")?.textContent === "Grace Hopper");
    const rowsBefore = await watcher.locator("#orders tbody tr[data-order]").count();

    const other = await browser.newPage();
    await other.goto(`http://127.0.0.1:${port}/`);
    await other.waitForSelector("#products tbody tr");
    await other.selectOption("#customer", "grace");
    await other.fill('#products tr[data-product="mug"] input', "7");
    await other.click("#place");
    await other.waitForSelector("#message.ok");
    const placed = (await other.textContent("#message")).match(/Placed (o-[a-z0-9]+)/)[1];

    // The first tab was not touched: its list and its best sellers move by themselves.
    await watcher.waitForSelector(`#orders tbody tr[data-order="${placed}"]`, { timeout: 10000 });
    assert.equal(await watcher.locator("#orders tbody tr[data-order]").count(), rowsBefore + 1);
    await watcher.waitForFunction(() => /Mug — \d+ sold/.test(document.querySelector("#top")?.textContent || ""),
      null, { timeout: 10000 });
    await watcher.waitForFunction(() =>
      document.querySelector('#products tr[data-product="mug"] .stock')?.textContent === "33");
    assert.equal(await watcher.textContent("#message"), "");
    await watcher.screenshot({ path: join(process.env.E2E_OUT || dir, "shop-live-e2e.png") });
  } finally {
    await browser.close();
    shop.kill("SIGTERM");
    await new Promise((resolve) => shop.on("exit", resolve));
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a retry after a lost answer and a double click place one order", async () => {
  const dir = mkdtempSync(join(tmpdir(), "cleave-e2e-"));
  const shop = await startShop(dir);
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage();
    // The first order reaches the shop but its answer is lost; later ones answer slowly, so that
    // a double click lands while the first click's request is still out.
    let orders = 0;
    await page.route("**/commands/shop.place_order", async (route) => {
      if (++orders === 1) {
        await route.fetch();
        return route.abort("failed");
      }
      await new Promise((resolve) => setTimeout(resolve, 300));
      return route.continue();
    });
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.waitForSelector("#products tbody tr");
    const stockBefore = Number(await page.textContent('#products tr[data-product="teapot"] .stock'));
    await page.selectOption("#customer", "grace");
    await page.fill('#products tr[data-product="teapot"] input', "1");
    await page.click("#place");
    await page.waitForSelector("#message.error");
    await page.dblclick("#place");
    await page.waitForSelector("#message.ok");
    assert.equal(orders, 3);

    const placed = await page.evaluate(async () => {
      const res = await fetch("/queries/shop.customer_orders", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Cleave-Consistency": "strong" },
        body: JSON.stringify({ customer_id: "grace" }),
      });
      return (await res.json()).result;
    });
    assert.equal(placed.length, 1, `orders placed: ${JSON.stringify(placed)}`);
    await page.waitForFunction((expected) =>
      Number(document.querySelector('#products tr[data-product="teapot"] .stock')?.textContent) === expected,
      stockBefore - 1);
  } finally {
    await browser.close();
    shop.kill("SIGTERM");
    await new Promise((resolve) => shop.on("exit", resolve));
    rmSync(dir, { recursive: true, force: true });
  }
});

test("an order is paid with its Pay button; one left unpaid is cancelled at its deadline", async () => {
  const dir = mkdtempSync(join(tmpdir(), "cleave-e2e-"));
  const shop = await startShop(dir, { SHOP_PAYMENT_TIMEOUT_MS: "2000" });
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.waitForSelector("#products tbody tr");
    const mugsBefore = Number(await page.textContent('#products tr[data-product="mug"] .stock'));
    await page.selectOption("#customer", "grace");
    await page.fill('#products tr[data-product="teapot"] input', "1");
    await page.click("#place");
    await page.waitForSelector("#message.ok");
    // Placed and unpaid: its row says until when, and offers to pay.
    await page.waitForFunction(() => /pay by/.test(document.querySelector("#orders tbody tr .deadline")?.textContent || ""));
    await page.click("#orders button.pay");
    await page.waitForFunction(() => document.querySelector("#orders tbody tr .status")?.textContent === "paid");
    assert.equal(await page.$("#orders tbody tr button.pay"), null);

    // Another, left unpaid: the shop cancels it at its deadline and its stock comes back.
    await page.fill('#products tr[data-product="teapot"] input', "0");
    await page.fill('#products tr[data-product="mug"] input', "3");
    await page.click("#place");
    await page.waitForFunction(() => /Placed/.test(document.querySelector("#message")?.textContent || "")
      && document.querySelectorAll("#orders tbody tr").length === 2);
    const unpaid = await page.getAttribute("#orders tbody tr:first-child", "data-order");
    const until = Date.now() + 15000;
    let status = "";
    while (Date.now() < until) {
      await page.reload();
      await page.waitForSelector("#customer option", { state: "attached" });
      await page.selectOption("#customer", "grace");
      await page.waitForSelector(`#orders tbody tr[data-order="${unpaid}"]`);
      status = await page.textContent(`#orders tbody tr[data-order="${unpaid}"] .status`);
      if (status === "cancelled") break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    assert.equal(status, "cancelled");
    // The products shown were read before the orders: read them again, after the cancellation.
    await page.reload();
    await page.waitForSelector("#products tbody tr");
    assert.equal(Number(await page.textContent('#products tr[data-product="mug"] .stock')), mugsBefore);
    await page.screenshot({ path: join(process.env.E2E_OUT || dir, "shop-payment-e2e.png") });
  } finally {
    await browser.close();
    shop.kill("SIGTERM");
    await new Promise((resolve) => shop.on("exit", resolve));
    rmSync(dir, { recursive: true, force: true });
  }
});
