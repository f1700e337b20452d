// The shop's /openapi.json is a valid OpenAPI 3.1 document, checked by
// @seriousme/openapi-schema-validator, and every schema in it is valid JSON Schema 2020-12 (ajv).
// Run by ctest (shop_openapi) with SHOP_BIN naming the shop executable.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { get } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Validator } from "@seriousme/openapi-schema-validator";
import Ajv2020 from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";

const { default: addFormats } = addFormatsModule;
const shopBin = process.env.SHOP_BIN;

// Starts `shop serve` in a folder of its own on a free port; resolves to { shop, port }.
async function startShop(dir, config) {
  const env = { ...process.env, CLEAVE_LISTEN: "127.0.0.1:0", CLEAVE_LOG_LEVEL: "warn" };
  delete env.CLEAVE_DATABASE;
  if (config) {
    env.SHOP_CONFIG = join(dir, "shop.json");
    writeFileSync(env.SHOP_CONFIG, JSON.stringify(config));
  } else {
    env.SHOP_CONFIG = join(dir, "none.json");
  }
  const shop = spawn(shopBin, ["serve"], { cwd: dir, env, stdio: ["ignore", "pipe", "inherit"] });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("shop did not start")), 15000);
    let out = "";
    shop.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(/listening on http:\/\/[^:]+:(\d+)\//);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    shop.on("exit", (code) => reject(new Error(`shop exited with ${code}`)));
  });
  return { shop, port };
}

function fetchJson(port, path) {
  return new Promise((resolve, reject) => {
    get({ host: "127.0.0.1", port, path }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => (body += chunk));
      res.on("end", () => {
        assert.equal(res.statusCode, 200, body);
        resolve(JSON.parse(body));
      });
    }).on("error", reject);
  });
}

// Every Schema Object in the document, with where it is.
function* schemas(node, where = "#") {
  if (Array.isArray(node)) {
    for (const [i, v] of node.entries()) yield* schemas(v, `${where}/${i}`);
  } else if (node && typeof node === "object") {
    for (const [key, value] of Object.entries(node)) {
      const at = `${where}/${key}`;
      if (key === "schema" && typeof value === "object") yield [at, value];
      else if (where === "#/components/schemas") yield [at, value];
      else yield* schemas(value, at);
    }
  }
}

// Serves the shop with `config`, validates its document, and returns it.
async function validatedDocument(config) {
  assert.ok(shopBin, "SHOP_BIN must name the shop executable");
  const dir = mkdtempSync(join(tmpdir(), "cleave-openapi-"));
  const { shop, port } = await startShop(dir, config);
  try {
    const doc = await fetchJson(port, "/openapi.json");
    const validator = new Validator();
    const result = await validator.validate(structuredClone(doc));
    assert.ok(result.valid, `not valid OpenAPI 3.1:\n${JSON.stringify(result.errors, null, 2)}`);
    assert.equal(validator.version, "3.1");

    const ajv = new Ajv2020({ strict: false });
    addFormats(ajv);
    let count = 0;
    for (const [at, schema] of schemas(doc)) {
      ++count;
      assert.ok(ajv.validateSchema(schema),
                `${at} is not JSON Schema 2020-12: ${ajv.errorsText(ajv.errors)}`);
    }
    assert.ok(count > 10, `only ${count} schemas found`);

    const ids = Object.values(doc.paths).flatMap((item) => Object.values(item))
      .map((op) => op.operationId);
    assert.deepEqual(ids.filter((id, i) => ids.indexOf(id) !== i), [], "operationIds repeat");
    return doc;
  } finally {
    shop.kill("SIGTERM");
    await new Promise((resolve) => shop.once("exit", resolve));
    rmSync(dir, { recursive: true, force: true });
  }
}

test("the shop's OpenAPI document is valid OpenAPI 3.1", async () => {
  const doc = await validatedDocument(null);
  assert.equal(doc.openapi, "3.1.0");
  assert.ok(doc.paths["/queries/shop.product_stock"].get, "GET for a scalar query");
  assert.equal(doc.components.securitySchemes, undefined);
});

test("with tokens and a title configured, it is still valid and says so", async () => {
  const doc = await validatedDocument({
    openapi: { title: "Shop under test", version: "7" },
    tokens: { s3cret: { subject: "ann", roles: ["staff", "admin"] } },
    roles: { "shop.restock": "staff" },
  });
  assert.deepEqual([doc.info.title, doc.info.version], ["Shop under test", "7"]);
  assert.deepEqual(doc.components.securitySchemes.bearer, { type: "http", scheme: "bearer" });
  assert.ok(doc.paths["/commands/shop.restock"].post.responses["401"]);
});
