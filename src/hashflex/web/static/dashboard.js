/* hashflex dashboard: renders /events (server-sent events, one JSON document per update). No build step. */
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const kw = (v) => (v == null ? "–" : Math.abs(v) >= 10000 ? (v / 1000).toFixed(2) + " MW" : Math.round(v).toLocaleString() + " kW");
  const mw = (v) => (v / 1000).toFixed(Math.abs(v) >= 10000 ? 2 : 3) + " MW";
  const num = (v, d = 1) => (v == null ? "–" : Number(v).toFixed(d));
  const PALETTE = ["#4ea1ff", "#2fbf71", "#f0b429", "#c678dd", "#56d4dd", "#ff8c42", "#e06c75", "#98c379"];
  const REASON_COLORS = {"": "#2fbf71", price: "#f0b429", noise: "#c678dd", carbon: "#98c379", dr: "#ff4d4f", import_limit: "#ff8c42",
    limits: "#ff8c42", "4cp_window": "#ff8c42", hold: "#ff4d4f", equipment: "#8b97a5"};
  const reasonColor = (r) => REASON_COLORS[String(r || "").split(":")[0].trim().toLowerCase().replace(" ", "_")] || "#8b97a5";
  let state = null, tz = "UTC", receivedAt = 0;
  const charts = {};

  function fmtDuration(s) {
    if (s == null) return "–";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(sec).padStart(2, "0");
  }
  function localTime(iso) {
    if (!iso) return "–";
    try { return new Date(iso).toLocaleTimeString([], {timeZone: tz, hour: "2-digit", minute: "2-digit"}); } catch (e) { return iso; }
  }

  function renderHeader(d) {
    $("site-name").textContent = d.site.name;
    $("sim-badge").hidden = !d.site.simulated;
    $("local-time").textContent = d.site.local_time;
    const h = $("health");
    h.textContent = d.health.healthy ? "healthy" : "unhealthy";
    h.className = "badge " + (d.health.healthy ? "ok" : "bad");
    const causes = d.health.unhealthy_causes || [];
    $("causes").hidden = !causes.length;
    $("causes").textContent = causes.join(" · ");
  }

  function renderNow(d) {
    const n = d.now;
    $("import-now").textContent = kw(n.grid_import_kw);
    $("import-limit").textContent = kw(n.import_limit_kw);
    $("limit-source").textContent = n.import_limit_label;
    const ratio = n.import_limit_kw ? n.grid_import_kw / n.import_limit_kw : 0;
    const bar = $("import-bar");
    bar.style.width = Math.min(100, Math.max(0, ratio * 100)) + "%";
    bar.className = ratio > 1.0001 ? "over" : ratio > 0.9 ? "near" : "";
    $("load-now").textContent = kw(n.load_kw);
    $("load-source").textContent = n.load_source;
    $("renewable-now").textContent = kw(n.renewable_kw);
    $("price-now").textContent = n.price_usd_mwh == null ? "–" : "$" + num(n.price_usd_mwh, 2) + "/MWh";
    $("breakevens").textContent = "breakeven " + Object.entries(n.breakeven_usd_mwh).map(([g, v]) => g + " $" + num(v, 0)).join(", ");
    const c = n.curtailment || {};
    $("curtail-now").textContent = c.available_kw == null ? "–" : mw(c.available_kw);
    $("curtail-detail").textContent = c.basis === "miner telemetry"
      ? `sleep ${kw(c.sleep_kw)} · power off ${kw(c.power_off_kw)} · ${c.miners_counted} of ${c.miners_reporting} reporting miners`
      : (c.basis || "") + (c.modelled_kw != null ? ` · fleet model ${mw(c.modelled_kw)} (not measured)` : "");
    $("units-now").textContent = n.units_running.toLocaleString();
    $("reason-now").textContent = n.reason || "";
    $("units-table").tBodies[0].innerHTML = n.units.map((u) =>
      `<tr><td>${esc(u.group)}</td><td>${esc(u.mode)}</td><td>${u.running.toLocaleString()}</td></tr>`).join("");
  }

  function renderDR(d) {
    const rows = d.dr || [];
    $("dr-none").hidden = rows.length > 0;
    $("dr-list").innerHTML = rows.map((e) => {
      const c = e.compliance || {};
      const comp = e.status === "active" || c.intervals_held || c.intervals_over
        ? `${c.intervals_held} held, ${c.intervals_over} over` + (c.max_import_kw != null ? ` (max ${kw(c.max_import_kw)})` : "") : "–";
      return `<tr class="${e.status}" data-event-id="${esc(e.event_id)}" data-status="${esc(e.status)}">` +
        `<td>${esc(e.event_id)}<br><span class="muted">${esc(e.status)}</span></td><td>${esc(e.issuer)}</td>` +
        `<td class="dr-limit">${kw(e.limit_kw)}</td>` +
        `<td class="dr-countdown" data-seconds="${e.seconds_left ?? ""}">${e.status === "active" ? "ends in " : "starts in "}` +
        `<span class="t">${fmtDuration(e.seconds_left)}</span><br><span class="muted">${localTime(e.status === "active" ? e.end : e.start)}</span></td>` +
        `<td>${e.acked_at ? localTime(e.acked_at) : "–"}</td><td>${comp}</td></tr>`;
    }).join("");
  }

  function renderNoise(d) {
    $("noise-table").tBodies[0].innerHTML = d.noise.receptors.map((r) =>
      `<tr data-receptor="${esc(r.receptor_id)}" class="${r.over_cap ? "over" : ""}">` +
      `<td>${esc(r.receptor_id)}${r.over_cap ? " <b>OVER CAP</b>" : ""}</td><td class="noise-measured">${num(r.measured_dba)}</td>` +
      `<td>${num(r.modelled_dba)}</td><td>${num(r.cap_dba)}${r.cap_source !== "profile" ? "*" : ""}</td><td>${r.margin_db == null ? "–" : num(r.margin_db) + " dB"}</td></tr>`).join("");
    const hist = d.noise.history || {};
    const ids = Object.keys(hist);
    if (!ids.length) return;
    const xs = Array.from(new Set(ids.flatMap((id) => hist[id].map((p) => p[0])))).sort((a, b) => a - b);
    const series = [{}], data = [xs];
    ids.forEach((id, i) => {
      const at = new Map(hist[id].map((p) => [p[0], p]));
      const color = PALETTE[i % PALETTE.length];
      series.push({label: id + " measured", stroke: color, width: 2, spanGaps: true});
      data.push(xs.map((x) => (at.get(x) || [])[1] ?? null));
      series.push({label: id + " modelled", stroke: color, dash: [4, 4], width: 1, spanGaps: true});
      data.push(xs.map((x) => (at.get(x) || [])[2] ?? null));
      series.push({label: id + " cap", stroke: "#ff4d4f", width: 1, dash: [2, 2], spanGaps: true});
      data.push(xs.map((x) => (at.get(x) || [])[3] ?? null));
    });
    plot("chart-noise", series, data, "dB(A)", 220, {x: {time: true, range: (u, min, max) => [Math.min(min, max - 3 * 3600), max + 60]}});
  }

  function plot(id, series, data, unit, height, scales) {
    const el = $(id);
    const key = series.map((s) => s.label).join("|");
    const width = Math.max(260, el.clientWidth || 300);
    if (!charts[id] || charts[id].key !== key) {
      if (charts[id]) charts[id].u.destroy();
      const opts = {width, height: height || 220, series, scales: scales || {},
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), tz),
        axes: [{stroke: "#8b97a5", grid: {stroke: "#2a323d"}}, {stroke: "#8b97a5", grid: {stroke: "#2a323d"}, label: unit, size: 60}],
        legend: {live: false}, cursor: {drag: {x: false, y: false}}};
      charts[id] = {key, u: new uPlot(opts, data, el)};
    } else {
      charts[id].u.setData(data);
      if (Math.abs(charts[id].u.width - width) > 4) charts[id].u.setSize({width, height: height || 220});
    }
  }

  function renderSchedule(d) {
    const s = d.schedule;
    if (!s || !s.t || !s.t.length) return;
    const series = [{}], data = [s.t];
    Object.entries(s.load_kw_by_group_mode).forEach(([k, v], i) => {
      series.push({label: k, stroke: PALETTE[i % PALETTE.length], width: 2, paths: uPlot.paths.stepped({align: 1})});
      data.push(v);
    });
    series.push({label: "full load", stroke: "#8b97a5", dash: [4, 4], width: 1, paths: uPlot.paths.stepped({align: 1})}); data.push(s.full_load_kw);
    series.push({label: "grid import", stroke: "#e8edf2", width: 1, paths: uPlot.paths.stepped({align: 1})}); data.push(s.grid_import_kw);
    series.push({label: "import limit", stroke: "#ff4d4f", width: 2, paths: uPlot.paths.stepped({align: 1})}); data.push(s.import_limit_kw);
    plot("chart-schedule", series, data, "kW", 240);
    const ps = [{}, {label: "price $/MWh", stroke: "#4ea1ff", width: 2, paths: uPlot.paths.stepped({align: 1})}], pd = [s.t, s.price_usd_mwh];
    Object.entries(s.breakeven_usd_mwh).forEach(([g, v], i) => {
      ps.push({label: "breakeven " + g, stroke: PALETTE[(i + 2) % PALETTE.length], dash: [6, 3], width: 1});
      pd.push(s.t.map(() => v));
    });
    plot("chart-price", ps, pd, "$/MWh", 170);
    const ns = [{}], nd = [s.t];
    Object.entries(s.noise_cap_dba || {}).forEach(([r, caps], i) => {
      const color = PALETTE[i % PALETTE.length];
      ns.push({label: r + " planned", stroke: color, width: 2, paths: uPlot.paths.stepped({align: 1})}); nd.push(s.noise_dba[r]);
      ns.push({label: r + " cap", stroke: color, dash: [3, 3], width: 1, paths: uPlot.paths.stepped({align: 1})}); nd.push(caps);
    });
    if (ns.length > 1) plot("chart-noise-plan", ns, nd, "dB(A)", 170);
    const strip = $("reason-strip");
    strip.innerHTML = s.reason.map((r, i) => `<span style="background:${reasonColor(r)}" title="${esc(s.reason_detail[i])}"></span>`).join("");
    const runs = [];
    s.reason.forEach((r, i) => {
      if (!r) return;
      const last = runs[runs.length - 1];
      if (last && last.detail === s.reason_detail[i] && last.end === i) { last.end = i + 1; } else { runs.push({start: i, end: i + 1, detail: s.reason_detail[i]}); }
    });
    const step = s.t.length > 1 ? s.t[1] - s.t[0] : 900;
    const hhmm = (t) => new Date(t * 1000).toLocaleTimeString([], {timeZone: tz, hour: "2-digit", minute: "2-digit"});
    $("reasons").innerHTML = runs.length ? runs.slice(0, 40).map((r) =>
      `<li>${hhmm(s.t[r.start])}–${hhmm(s.t[r.end - 1] + step)}: ${esc(r.detail)}</li>`).join("") : "<li class=muted>full load all day</li>";
  }

  function meter(label, used, budget, left, source) {
    if (budget == null) return `<div class="meter"><span>${label}</span><span class="muted">${num(used, 0)} kg used, no budget</span></div>`;
    const pct = budget > 0 ? Math.min(100, used / budget * 100) : 100;
    return `<div class="meter"><span>${label}</span><div class="bar"><div class="${pct >= 100 ? "over" : pct > 90 ? "near" : ""}" style="width:${pct}%"></div></div>` +
      `<span>${num(used, 0)} / ${num(budget, 0)} kg (${num(left, 0)} left, ${esc(source)})</span></div>`;
  }

  function renderCarbon(d) {
    const c = d.carbon;
    $("carbon").innerHTML = meter("today", c.day.used_kg, c.day.budget_kg, c.day.left_kg, c.day.source) +
      meter("month", c.month.used_kg, c.month.budget_kg, c.month.left_kg, c.month.source) +
      `<p>hashprice <b>$${num(c.hashprice_usd_per_ph_day, 2)}/PH/day</b> <span class="muted">(${esc(c.hashprice_source)})</span></p>`;
  }

  function renderLimits(d) {
    const l = d.limits;
    const rows = (l.manager_limits || []).map((m) => `<li>${esc(m.issuer)}: ${esc(m.part)} ` +
      (m.part === "import" ? kw(m.import_limit_kw) : m.part === "noise" ? m.noise_caps.map((c) => esc(c.receptor_id) + " " + c.cap_dba + " dB(A)").join(", ")
        : esc(m.carbon_period) + " " + num(m.carbon_budget_kg, 0) + " kg") + (m.valid_until ? " until " + localTime(m.valid_until) : "") + "</li>");
    const holds = (l.holds || []).map((h) => `<li class="over">held in memory: ${esc(h.key)} ${kw(h.limit_kw)}</li>`);
    $("limits-in-force").innerHTML = rows.length || holds.length ? `<ul>${rows.join("")}${holds.join("")}</ul>` : `<p class="muted">No manager limit in force.</p>`;
    const issuer = $("lim-issuer");
    if (issuer.options.length !== d.site.managers.length) issuer.innerHTML = d.site.managers.map((m) => `<option>${esc(m)}</option>`).join("");
    const rec = $("lim-noise-receptor");
    if (rec.options.length !== d.noise.receptors.length) rec.innerHTML = d.noise.receptors.map((r) => `<option>${esc(r.receptor_id)}</option>`).join("");
  }

  function renderEvents(d) {
    $("events").innerHTML = (d.events || []).slice().reverse().slice(0, 100).map((e) =>
      `<li class="${esc(e.kind)}"><span class="muted">${localTime(e.at)}</span> <span class="k">${esc(e.kind)}</span> ` +
      `<span class="trig">[${esc(e.trigger)}]</span> ${esc(e.detail)}</li>`).join("");
  }

  function renderInputs(d) {
    const i = d.inputs;
    $("inputs-table").tBodies[0].innerHTML = Object.entries(i.feed_ages_s).map(([k, v]) =>
      `<tr><td>${esc(k)}</td><td>${fmtDuration(v)}</td></tr>`).join("") || `<tr><td colspan=2 class=muted>no feed heard yet</td></tr>`;
    const rej = Object.entries(i.input_rejections || {}).map(([k, r]) => esc(k) + ": " + Object.entries(r).map(([w, n]) => esc(w) + " " + n).join(", "));
    $("inputs-extra").innerHTML = `<p>fallbacks: ${i.fallbacks_in_use.length ? esc(i.fallbacks_in_use.join(", ")) : "none"}</p>` +
      `<p>store: <b>${esc(i.store)}</b> · broker: <b>${i.mqtt_connected == null ? "in-process" : i.mqtt_connected ? "connected" : "DOWN"}</b>` +
      ` · miners unavailable: ${i.miners_unavailable}</p>` + (rej.length ? `<p>rejected: ${rej.join("; ")}</p>` : "");
  }

  function render(d) {
    state = d; tz = d.site.timezone || "UTC"; receivedAt = Date.now();
    for (const f of [renderHeader, renderNow, renderDR, renderNoise, renderSchedule, renderCarbon, renderLimits, renderEvents, renderInputs]) {
      try { f(d); } catch (e) { console.error(f.name, e); }
    }
  }

  // Between updates of a live (wall-clock) site the countdowns tick on their own.
  setInterval(() => {
    if (!state || state.site.simulated) return;
    const gone = (Date.now() - receivedAt) / 1000;
    document.querySelectorAll(".dr-countdown").forEach((td) => {
      const s = parseFloat(td.dataset.seconds);
      if (!isNaN(s)) td.querySelector(".t").textContent = fmtDuration(s - gone);
    });
  }, 1000);

  function connect() {
    const token = new URLSearchParams(location.search).get("token");
    const src = new EventSource("/events" + (token ? "?token=" + encodeURIComponent(token) : ""));
    src.onopen = () => { $("conn").textContent = "live"; $("conn").className = "badge ok"; };
    src.onerror = () => { $("conn").textContent = "reconnecting"; $("conn").className = "badge off"; };
    src.onmessage = (ev) => { try { render(JSON.parse(ev.data)); } catch (e) { console.error(e); } };
  }

  async function sendLimits(body) {
    const ack = $("lim-ack");
    ack.className = ""; ack.textContent = "sending…";
    const token = $("lim-token").value.trim();
    const headers = {"Content-Type": "application/json"};
    if (token) headers.Authorization = "Bearer " + token;
    try {
      const r = await fetch("/api/limits", {method: "POST", headers, body: JSON.stringify(body)});
      const data = await r.json();
      if (r.ok) { ack.className = "accepted"; ack.textContent = "acked: " + data.status + " — " + data.reason; }
      else { ack.className = "refused"; ack.textContent = (r.status === 401 || r.status === 403 ? "refused (" + r.status + "): " : "rejected: ") + (data.reason || data.error); }
      ack.dataset.status = r.status;
    } catch (e) { ack.className = "refused"; ack.textContent = "not sent: " + e; }
  }

  $("limits-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = {issuer: $("lim-issuer").value, reason: $("lim-reason").value || "set from the dashboard"};
    const v = (id) => $(id).value.trim();
    if (v("lim-import")) body.import_limit_kw = v("lim-import");
    if (v("lim-noise-cap")) body.noise_caps_dba = {[$("lim-noise-receptor").value]: v("lim-noise-cap")};
    if (v("lim-carbon")) { body.carbon_budget_kg = v("lim-carbon"); body.carbon_period = $("lim-carbon-period").value; }
    if (v("lim-valid")) body.valid_minutes = v("lim-valid");
    sendLimits(body);
  });
  $("lim-clear").addEventListener("click", () => sendLimits({issuer: $("lim-issuer").value, reason: $("lim-reason").value || "cleared from the dashboard",
    clear: ["import", "noise", "carbon"]}));
  window.addEventListener("resize", () => { if (state) render(state); });
  fetch("/api/state").then((r) => r.ok ? r.json() : null).then((d) => { if (d && d.site && !state) render(d); }).catch(() => {});
  connect();
})();
