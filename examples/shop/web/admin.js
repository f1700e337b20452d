// The read side's admin page: GET /admin/projections, /admin/schedules and /admin/inboxes every
// second; rebuild and replay buttons.
"use strict";

const $ = (id) => document.getElementById(id);

async function api(method, path) {
  const res = await fetch(path, { method });
  const json = await res.json();
  if (!res.ok) throw new Error(json.detail || json.title);
  return json;
}

function say(text, ok) {
  $("message").textContent = text;
  $("message").className = ok ? "ok" : "error";
}

function rebuildCell(p) {
  const job = p.rebuild;
  if (!job) return p.rebuild_position !== undefined ? `unfinished at ${p.rebuild_position}` : "";
  if (job.error) return `failed: ${job.error}`;
  const share = job.total > 0 ? Math.min(1, job.applied / job.total) : 1;
  const bar = `<progress max="1" value="${share}"></progress> ${job.applied}/${job.total}`;
  if (job.running) return bar;
  if (job.swapped) return `swapped (${job.applied} events)`;
  if (job.differences > 0) return `not swapped: ${job.differences} rows differ`;
  return bar;
}

// Text for innerHTML: what a stranger put in a command's payload must not become markup.
const esc = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function loadSchedules() {
  const { pending, failed, schedules } = await api("GET", "/admin/schedules");
  $("schedule-counts").textContent = `${pending} pending, ${failed} failed`;
  $("schedules").querySelector("tbody").innerHTML = schedules.map((s) => `
    <tr class="${esc(s.state)}"><td>${esc(new Date(s.due_ms).toLocaleString())}</td><td>${esc(s.command)}</td>
      <td><code>${esc(JSON.stringify(s.payload))}</code></td>
      <td>${esc(s.origin ? `${s.origin} (${s.instance})` : s.subject || "—")}</td><td>${esc(s.state)}</td>
      <td class="num">${s.attempts}</td><td>${esc(s.last_error || "")}</td></tr>`).join("");
}

async function loadInboxes() {
  const { inboxes } = await api("GET", "/admin/inboxes");
  $("inboxes-panel").hidden = inboxes.length === 0;
  $("inboxes").querySelector("tbody").innerHTML = inboxes.flatMap((i) => i.dead_letters.map((d, n) => `
    <tr><td>${esc(i.name)}</td><td><code>${esc(d.message_id)}</code></td><td>${esc(d.subject)}</td>
      <td><code>${esc(d.payload)}</code></td><td>${esc(d.error)}</td><td class="num">${esc(d.replays)}</td>
      <td>${n === 0 ? `<button class="secondary replay-inbox" data-name="${esc(i.name)}">Replay all</button>` : ""}</td></tr>`)).join("");
}

$("inboxes").addEventListener("click", async (e) => {
  if (!e.target.classList.contains("replay-inbox")) return;
  try {
    const r = await api("POST", `/admin/inboxes/${e.target.dataset.name}/replay`);
    say(`Replayed ${r.replayed}; ${r.still_parked} still refused.`, true);
    await loadInboxes();
  } catch (err) {
    say(err.message, false);
  }
});

async function load() {
  const { projections, replicas } = await api("GET", "/admin/projections");
  $("replicas-panel").hidden = replicas.length === 0;
  $("replicas").querySelector("tbody").innerHTML = replicas.map((r) => `
    <tr><td><code>${r.url}</code></td><td><code>${r.replay_lsn}</code></td><td class="num">${r.lag_bytes}</td>
      <td class="num">${r.up ? r.lag_seconds.toFixed(3) : "—"}</td><td>${!r.up ? "down" : r.set_aside ? "set aside" : "yes"}</td>
      <td class="num">${r.reads}</td></tr>`).join("");
  $("projections").querySelector("tbody").innerHTML = projections.map((p) => `
    <tr data-projection="${p.name}">
      <td>${p.name}</td><td>${p.mode}</td><td><code>${p.checkpoint || "0"}</code></td>
      <td class="num lag-events">${p.lag_events}</td><td class="num">${p.lag_seconds.toFixed(3)}</td>
      <td class="num dead">${p.dead_letters}</td><td class="rebuild">${rebuildCell(p)}</td>
      <td>${p.mode === "async" || p.mode === "materialized" ? `<button class="rebuild-button" data-name="${p.name}">Rebuild</button>` : ""}
          ${p.dead_letters > 0 ? `<button class="secondary replay" data-name="${p.name}">Replay</button>
          <button class="secondary letters" data-name="${p.name}">Show</button>` : ""}</td>
    </tr>${(p.units || []).map((u) => `
    <tr class="unit" data-unit="${esc(u.name)}">
      <td>&nbsp;&nbsp;↳ ${esc(u.name)}</td><td>${u.owner ? `held by <code>${esc(u.owner)}</code>` : "not held"}</td>
      <td><code>${esc(u.checkpoint || "0")}</code></td><td class="num">${u.lag_events}</td><td colspan="4"></td>
    </tr>`).join("")}`).join("");
}

$("projections").addEventListener("click", async (e) => {
  const name = e.target.dataset.name;
  if (!name) return;
  try {
    if (e.target.classList.contains("rebuild-button")) {
      await api("POST", `/admin/projections/${name}/rebuild`);
      say(`Rebuilding ${name}…`, true);
    } else if (e.target.classList.contains("replay")) {
      const r = await api("POST", `/admin/projections/${name}/replay-dead-letters`);
      say(`Replayed ${r.replayed}; ${r.still_parked} still parked.`, true);
    } else if (e.target.classList.contains("letters")) {
      const { dead_letters } = await api("GET", `/admin/projections/${name}/dead-letters`);
      $("letters").hidden = false;
      $("letters-of").textContent = name;
      $("letters").querySelector("tbody").innerHTML = dead_letters.map((d) =>
        `<tr><td><code>${esc(d.position)}</code></td><td>${esc(d.type)}</td><td>${esc(d.error)}</td></tr>`).join("");
    }
    await load();
  } catch (err) {
    say(err.message, false);
  }
});

const loadAll = () => Promise.all([load(), loadSchedules(), loadInboxes()]).catch((e) => say(e.message, false));
loadAll();
setInterval(loadAll, 1000);
