// Hearth dashboard: polls /api/status every 2 s and draws it. No libraries, no build.
"use strict";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const POWER_COLORS = { normal: "#2e7d32", throttled: "#b8860b", draining: "#c2571a", off: "#6b2020" };
let currency = { symbol: "", decimals: 0 };

function money(units) {
  const d = currency.decimals || 0;
  const v = Number(units) / 10 ** d;
  const digits = d === 0 ? 0 : v >= 100 ? 2 : 4;
  return v.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits }) +
    (currency.symbol ? " " + currency.symbol : "");
}
const time = (t) => new Date(t * 1000).toLocaleTimeString();
function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function badge(id, cls, text) {
  const b = $(id);
  b.textContent = text;
  b.className = "badge " + cls;
}

function drawChart(series, now) {
  const box = $("chart");
  if (!series.length) { box.replaceChildren(el("p", { class: "muted" }, "No jobs yet.")); return; }
  const W = Math.max(box.clientWidth, 300), H = 220, L = 90, R = 10, T = 10, B = 26;
  const t0 = series[0][0], t1 = Math.max(now, series[series.length - 1][0], t0 + 1);
  const vmax = Math.max(series[series.length - 1][1], 1);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => H - B - (v / vmax) * (H - T - B);
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, "data-points": series.length, role: "img" });
  svg.append(el("svg:line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" }));
  svg.append(el("svg:line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" }));
  let d = `M ${x(t0)} ${y(0)}`;
  for (const [t, v] of series) d += ` L ${x(t).toFixed(1)} ${y(v).toFixed(1)}`;
  d += ` L ${x(t1).toFixed(1)} ${y(series[series.length - 1][1]).toFixed(1)}`;  // flat until now
  const area = d + ` L ${x(t1).toFixed(1)} ${y(0)} Z`;
  svg.append(el("svg:path", { d: area, fill: "#c2571a22", stroke: "none" }));
  svg.append(el("svg:path", { d, fill: "none", stroke: "#c2571a", "stroke-width": 2, class: "earnings-line" }));
  for (const [t, v] of series.slice(-50)) svg.append(el("svg:circle", { cx: x(t), cy: y(v), r: 2.5, fill: "#c2571a" }));
  svg.append(el("svg:text", { x: L - 6, y: T + 10, "text-anchor": "end", "font-size": 11 }, money(vmax)));
  svg.append(el("svg:text", { x: L - 6, y: H - B, "text-anchor": "end", "font-size": 11 }, "0"));
  svg.append(el("svg:text", { x: L, y: H - 8, "font-size": 11 }, time(t0)));
  svg.append(el("svg:text", { x: W - R, y: H - 8, "text-anchor": "end", "font-size": 11 }, time(t1)));
  box.replaceChildren(svg);
}

function drawPower(power, now) {
  const hist = power.history;
  const W = 800, H = 22, t0 = hist.length ? hist[0].at : now, span = Math.max(now - t0, 1);
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  hist.forEach((h, i) => {
    const end = i + 1 < hist.length ? hist[i + 1].at : now;
    const x = ((h.at - t0) / span) * W, w = Math.max(((end - h.at) / span) * W, 1);
    const r = el("svg:rect", { x, y: 0, width: w, height: H, fill: POWER_COLORS[h.state] || "#888" });
    r.append(el("svg:title", {}, `${h.state} from ${time(h.at)}`));
    svg.append(r);
  });
  $("power-timeline").replaceChildren(svg);
  $("power-history").replaceChildren(...hist.slice(-8).reverse().map((h) =>
    el("li", {}, `${time(h.at)} → ${h.state}${h.reason ? " (" + h.reason + ")" : ""}`)));
}

function render(s) {
  currency = s.currency || currency;
  badge("node-state", s.accepting ? "state-" + s.state : "state-draining",
    s.state + (s.accepting ? "" : " · not bidding"));
  badge("power-state", "power-" + s.power.state, s.power.state);
  $("updated").textContent = "updated " + time(s.updated_at);
  $("earned").textContent = money(s.earnings.credited);
  $("earned-detail").textContent = "redeemed on chain (net): " + money(s.earnings.on_chain_net);
  $("pending").textContent = money(s.vouchers.pending_amount);
  const r = s.redemptions;
  $("redemptions").textContent = Object.keys(r).length
    ? "redemptions: " + Object.entries(r).map(([k, v]) => `${v.count} ${k}`).join(", ")
    : `${s.vouchers.held} channel(s), no redemptions yet`;
  const lost = s.losses || { total: 0, by_cause: {} }, flagged = s.flagged_buyers || [];
  $("losses").textContent = (lost.total > 0
    ? "lost: " + Object.entries(lost.by_cause).map(([k, v]) => `${money(v)} (${k.replace("_", " ")})`).join(", ")
    : "") + (flagged.length ? `${lost.total > 0 ? " · " : ""}${flagged.length} buyer(s) flagged` : "");
  $("tokens").textContent = s.tokens.total.toLocaleString();
  $("tokens-rate").textContent = s.tokens.per_s.toFixed(1) + " tokens/s";
  const done = s.jobs.by_outcome.done || 0;
  $("jobs").textContent = `${done} done · ${s.jobs.active} active`;
  const dec = Object.values(s.bids.declined).reduce((a, b) => a + b, 0);
  $("bids").textContent = `bids won ${s.bids.won}, lost ${s.bids.lost}, declined ${dec}` +
    (s.price_floor_per_1k != null ? ` · floor ${money(s.price_floor_per_1k)}/1k` : "");
  drawChart(s.earnings.series, s.updated_at);
  drawPower(s.power, s.updated_at);
  $("jobs-table").replaceChildren(...s.jobs.recent.map((j) => {
    const tr = el("tr");
    for (const v of [j.job_id.slice(0, 10), j.status, j.tokens, money(j.amount), j.finished_at ? time(j.finished_at) : "…"])
      tr.append(el("td", {}, String(v)));
    return tr;
  }));
  const hw = s.hardware, parts = [];
  if (hw.cpu.load1 !== undefined) parts.push(`CPU load ${hw.cpu.load1} on ${hw.cpu.cores} cores`);
  if (hw.cpu.mem_used_frac !== undefined) parts.push(`memory ${(hw.cpu.mem_used_frac * 100).toFixed(0)} % used`);
  if (hw.gpus === null) parts.push("GPU telemetry unavailable (no NVML)");
  else for (const g of hw.gpus)
    parts.push(`GPU ${g.index} ${g.name}: ${g.util_pct ?? "?"} % · ${g.temp_c ?? "?"} °C · ${g.power_w !== undefined ? g.power_w.toFixed(0) : "?"} W`);
  $("hardware").replaceChildren(...parts.map((p) => el("div", {}, p)));
  $("peer-count").textContent = `(${s.peers.count})`;
  $("peers").replaceChildren(...s.peers.ids.slice(0, 12).map((p) => el("li", {}, p)));
  const g = s.gossip;
  $("gossip").textContent = g.delivered !== undefined
    ? `gossip: ${g.delivered} delivered, ${g.dropped_full} dropped (queue full), ${g.invalid} invalid` : "";
}

async function poll() {
  try {
    const resp = await fetch("/api/status", { cache: "no-store" });
    if (resp.ok) render(await resp.json());
    else $("updated").textContent = "status error " + resp.status;
  } catch (e) {
    $("updated").textContent = "node unreachable";
  }
}

async function control(path, body) {
  const token = $("token").value;
  sessionStorage.setItem("hearth-token", token);
  const resp = await fetch(path, {
    method: "POST",
    headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
    body: body || "{}",
  });
  const doc = await resp.json().catch(() => ({}));
  $("control-result").textContent = resp.ok ? "done: " + doc.action : `refused (${resp.status}): ${doc.error || ""}`;
  poll();
}

$("token").value = sessionStorage.getItem("hearth-token") || "";
$("drain").onclick = () => control("/api/drain");
$("resume").onclick = () => control("/api/resume");
$("set-price").onclick = () => {
  const v = $("price").value.trim();
  if (!/^\d+$/.test(v)) { $("control-result").textContent = "price must be a whole number"; return; }
  control("/api/price", `{"price_per_1k": ${v}}`);  // digits verbatim: no float rounding
};
poll();
setInterval(poll, 2000);
