/* evflex — operator single-page app (hash routes: #/fleet, #/sessions, #/sites, #/sites/{id}, #/events). */
(function () {
  "use strict";
  const { esc, num, kw, kwh, pct, money, perKwh, time, dateTime, ago, debounce, figures, DASH } = EV;
  const $ = (sel, root = document) => root.querySelector(sel);
  const enc = encodeURIComponent;
  const main = $("#view");
  const MAX_POINTS = 2000;
  const PLAN_MAX_AGE_MS = 30000;
  const SECURITY = "Security"; // the kind of a refused connection or control attempt

  const S = {
    me: null, csrf: "", view: null, params: [], gen: 0,
    stations: [], stationsAt: 0,
    txs: [], needs: new Map(), notices: [], plansStale: true, plansAt: 0,
    availPending: new Map(), // station id -> "inoperative" while the station has it scheduled
    sites: [], events: [], kinds: new Set(["security", SECURITY]), eventsKind: "",
    site: null, plan: null, hist: [], chart: null, chartKey: "", nowX: null, kpiPeriod: "day",
  };

  const canAct = () => !!S.me && ["operator", "admin"].includes(S.me.role);

  /* ---------- API ---------- */

  async function api(path, opts = {}) {
    const write = (opts.method || "GET") !== "GET";
    try {
      return await EV.api(path, { ...opts, headers: write ? { "X-CSRF-Token": S.csrf } : {} });
    } catch (e) {
      if (e.status === 401) location.assign("/login");
      throw e;
    }
  }
  const command = (sid, name, body) =>
    api(`/api/v1/stations/${enc(sid)}/commands/${name}`, { method: "POST", body });
  const getPlan = (siteId) =>
    api(`/api/v1/sites/${enc(siteId)}/plan`).catch((e) => {
      if (e.status === 404) return null;
      throw e;
    });

  /** The plan, or null with the reason kept in S.planError (the site page shows it). */
  const planOrError = (siteId) => getPlan(siteId).then((p) => {
    S.planError = "";
    return p;
  }, (e) => {
    S.planError = e.detail || e.message;
    return null;
  });

  /* ---------- feedback: toast, confirm dialog, focus ---------- */

  function toast(text, kind = "ok") {
    const box = $("#toast");
    const item = document.createElement("div");
    item.className = "toast-item toast-" + kind;
    const msg = document.createElement("span");
    msg.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "toast-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "\u00d7";
    close.onclick = () => item.remove();
    item.append(msg, close);
    box.prepend(item);
    while (box.children.length > 4) box.lastElementChild.remove();
    placeToasts();
    setTimeout(() => item.remove(), kind === "error" ? 15000 : 7000);
  }

  /** Toasts sit top-right just below the header; if they would cover the control in use
   * (or the site's limit form) they move to the bottom-right corner. */
  function placeToasts() {
    const box = $("#toast");
    const bar = $(".topbar");
    const below = bar ? bar.getBoundingClientRect().bottom : 0;
    box.style.top = Math.max(8, below + 8) + "px";
    box.classList.remove("toast-low");
    const overlaps = (el) => {
      if (!el || !el.getBoundingClientRect || el === document.body) return false;
      const a = box.getBoundingClientRect();
      const b = el.getBoundingClientRect();
      return a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
    };
    const guarded = [document.activeElement, ...main.querySelectorAll("form button, form input")];
    if (guarded.some(overlaps)) box.classList.add("toast-low");
  }
  window.addEventListener("resize", () => placeToasts());

  /** A station answer or another API result as one readable phrase, plus a toast kind. */
  function describe(r) {
    if (r && typeof r === "object" && "response" in r) {
      const { status, ...rest } = r.response || {};
      const more = Object.keys(rest).length ? " " + JSON.stringify(rest).slice(0, 200) : "";
      const ok = !status || /^(accepted|scheduled)$/i.test(status);
      const when = /^scheduled$/i.test(status || "") ? ": takes effect when the session ends" : "";
      return [status ? `station answered ${status}${when}${more}` : `station answered${more || " (no status)"}`, ok ? "ok" : "warn"];
    }
    if (r && typeof r === "object") {
      const text = [r.status, r.message || r.reason].filter(Boolean).join(": ") || "done";
      const risk = r.accepted === false || r.status === "NOT_POSSIBLE" || r.need_status === "NOT_POSSIBLE";
      return [text, risk ? "warn" : "ok"];
    }
    return ["done", "ok"];
  }

  async function run(label, fn, after) {
    try {
      const [text, kind] = describe(await fn());
      toast(`${label}: ${text}`, kind);
    } catch (e) {
      toast(`${label} failed: ${e.detail || e.message}`, "error");
    }
    if (after) after();
  }

  /** Identify a focused action button so it can be found again after a re-render. */
  function focusKey(el) {
    const row = el && el.dataset && el.dataset.action && el.closest("tr");
    return row ? [row.dataset.station ?? row.dataset.tx, el.dataset.action] : null;
  }
  function refocus(key) {
    if (!key) return;
    const row = [...main.querySelectorAll("tr")].find((r) => (r.dataset.station ?? r.dataset.tx) === key[0]);
    const b = row && row.querySelector(`[data-action="${key[1]}"]`);
    if (b) b.focus();
  }

  const dialog = $("#confirm");
  /** Ask for confirmation; resolves to the dialog's FormData, or null when cancelled. */
  function confirmDialog(text, fieldsHtml = "", okLabel = "Confirm") {
    const opener = document.activeElement;
    const key = focusKey(opener);
    $("#confirm-text").textContent = text;
    $("#confirm-fields").innerHTML = fieldsHtml;
    $("#confirm-ok").textContent = okLabel;
    dialog.returnValue = "";
    dialog.showModal();
    ($("#confirm-fields input, #confirm-fields select") || $("#confirm-cancel")).focus();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        resolve(dialog.returnValue === "ok" ? new FormData($("#confirm-form")) : null);
        if (!opener || !opener.isConnected) refocus(key);
      }, { once: true });
    });
  }

  /* ---------- small HTML builders ---------- */

  function btn(action, label, cls, reason = "") {
    const why = canAct() ? reason : "needs operator role";
    return `<button type="button" class="btn btn-small ${cls}" data-action="${action}"` +
      `${why ? ` disabled title="${esc(why)}"` : ""}>${esc(label)}</button>`;
  }

  function table(id, caption, heads, rows, empty) {
    const body = rows.length ? rows.join("")
      : `<tr class="empty"><td colspan="${heads.length}">${esc(empty)}</td></tr>`;
    return `<div class="table-wrap"><table id="${id}"><caption class="sr-only">${esc(caption)}</caption>` +
      `<thead><tr>${heads.map((h) => `<th scope="col">${esc(h)}</th>`).join("")}</tr></thead>` +
      `<tbody>${body}</tbody></table></div>`;
  }

  function summary(items) {
    return items.map(([label, value, cls = ""]) =>
      `<li class="${cls}"><span class="summary-value">${esc(value)}</span>` +
      `<span class="summary-label">${esc(label)}</span></li>`).join("");
  }


  const wh = (v) => (v == null ? null : v / 1000);

  /* ---------- fleet ---------- */

  const CONN_CLASS = {
    Available: "ok", Charging: "charging", Occupied: "busy", Preparing: "busy", SuspendedEV: "busy",
    SuspendedEVSE: "busy", Finishing: "busy", Reserved: "reserved", Unavailable: "off", Faulted: "error",
  };
  const hasError = (c) => !!c.error_code && c.error_code !== "NoError";
  const isFaulted = (c) => c.status === "Faulted" || hasError(c);
  const evseConnectors = (s) => (s.connectors || []).filter((c) => c.evse_id !== 0);
  const OFF = new Set(["Unavailable", "Inoperative"]);
  /** What the station's availability is: some/all connectors out of service, or a change
   * to inoperative the station has scheduled (a session still runs). */
  function availability(s) {
    const cs = evseConnectors(s);
    const all = [...cs, ...(s.connectors || []).filter((c) => c.evse_id === 0)];
    const allOff = cs.length > 0 && cs.every((c) => OFF.has(c.status));
    if (allOff) S.availPending.delete(String(s.id)); // the scheduled change took effect
    return { anyOff: all.some((c) => OFF.has(c.status)), allOff, pending: S.availPending.has(String(s.id)) };
  }
  const findStation = (id) => S.stations.find((s) => String(s.id) === String(id));

  function connectorBadge(c, multi) {
    const id = multi ? `${c.evse_id}.${c.connector_id}` : String(c.evse_id ?? c.connector_id);
    const err = hasError(c);
    const text = `${id}: ${c.status || "Unknown"}${err ? ` (${c.error_code})` : ""}`;
    const tip = [c.info, c.vendor_error_code && "vendor code " + c.vendor_error_code,
      c.status_at && "since " + dateTime(c.status_at)].filter(Boolean).join(" · ");
    const cls = err || c.status === "Faulted" ? "error" : CONN_CLASS[c.status] || "off";
    return `<span class="connector st-${cls}" title="${esc(tip)}">${esc(text)}</span>`;
  }

  function stationRow(s) {
    const conns = (s.connectors || []).slice()
      .sort((a, b) => (a.evse_id - b.evse_id) || (a.connector_id - b.connector_id));
    const perEvse = {};
    conns.forEach((c) => { perEvse[c.evse_id] = (perEvse[c.evse_id] || 0) + 1; });
    const multi = Object.values(perEvse).some((n) => n > 1);
    const offline = s.connected ? "" : "station is offline";
    const av = availability(s);
    const reg = s.registration_status && s.registration_status !== "Accepted"
      ? `<div class="sub">registration ${esc(s.registration_status)}</div>` : "";
    return `<tr data-station="${esc(s.id)}">
      <th scope="row"><a class="station-link" href="#/stations/${enc(s.id)}">${esc(s.id)}</a>${s.site_id != null ? `<div class="sub">site ${esc(s.site_id)}</div>` : ""}${reg}</th>
      <td class="ocpp-version">${esc(s.ocpp_version || DASH)}</td>
      <td>${esc([s.vendor, s.model].filter(Boolean).join(" ") || DASH)}${s.serial_number ? `<div class="sub">SN ${esc(s.serial_number)}</div>` : ""}</td>
      <td>${esc(s.firmware_version || DASH)}</td>
      <td class="conn-state"><span class="badge ${s.connected ? "badge-ok" : "badge-off"}">${s.connected ? "online" : "offline"}</span>${s.steerable === false
        ? `<span class="badge badge-bad not-steerable" title="${esc(s.not_steerable_reason || "refuses charging profiles")}">not steerable</span>` : ""}</td>
      <td class="hb-age" data-age="${esc(s.heartbeat_age_s ?? "")}" title="${esc(s.last_heartbeat_at ? dateTime(s.last_heartbeat_at) : "")}">${ago(s.heartbeat_age_s)}</td>
      <td><div class="connectors">${conns.map((c) => connectorBadge(c, multi)).join("") || DASH}${av.pending
        ? '<span class="connector st-busy avail-pending" title="the station sets itself inoperative when its session ends">inoperative when the session ends</span>' : ""}</div></td>
      <td class="actions"><div class="btns">${btn("reset", "Reset", "btn-reset", offline)}${av.anyOff || av.pending
        ? btn("operative", "Set operative", "btn-operative", offline) : ""}${!av.allOff && !av.pending
        ? btn("inoperative", "Set inoperative", "btn-inoperative", offline) : ""}${btn("start", "Remote start", "btn-start", offline)}</div></td>
    </tr>`;
  }

  function renderFleet() {
    const st = S.stations;
    const conns = st.flatMap((s) => evseConnectors(s));
    const faulted = conns.filter(isFaulted).length;
    $("#fleet-summary").innerHTML = summary([
      ["Stations online", `${st.filter((s) => s.connected).length} / ${st.length}`],
      ["Connectors charging", String(conns.filter((c) => c.status === "Charging" || c.status === "Occupied").length)],
      ["Connectors faulted", String(faulted), faulted ? "bad" : ""],
    ]);
    $("#fleet-body").innerHTML = table("stations-table", "Charging stations",
      ["Station", "OCPP", "Vendor / model", "Firmware", "Connection", "Last heard", "Connectors", "Actions"],
      st.map(stationRow), "No stations registered yet.");
  }

  function tickAges() {
    if (S.view !== views.fleet) return;
    const dt = (Date.now() - S.stationsAt) / 1000;
    main.querySelectorAll("td.hb-age").forEach((td) => {
      const base = parseFloat(td.dataset.age);
      if (Number.isFinite(base)) td.textContent = ago(base + dt);
    });
  }

  /* ---------- sessions ---------- */

  const findTx = (id) => S.txs.find((t) => String(t.id) === String(id));
  const txLabel = (t) => `${t.station_id} EVSE ${t.evse_id ?? DASH}`;

  function v2xState(t) {
    if (["charging", "discharging", "idle"].includes(t.v2x_state)) return t.v2x_state;
    const p = t.power_w || 0;
    return p > 50 ? "charging" : p < -50 ? "discharging" : "idle";
  }

  /** The verdict on a need as the dashboard shows it (the same one the driver page gets). */
  function needFlag(v) {
    if (!v || v.status === "NO_NEEDS") return [DASH, "need-none"];
    return v.status === "NOT_POSSIBLE" ? ["at risk", "need-risk"] : ["on track", "need-ok"];
  }
  const needTip = (v) => (v && v.status !== "NO_NEEDS"
    ? `still wanted ${kwh(v.need_kwh)}, the plan brings ${kwh(v.expected_kwh)} by departure` +
      (v.status === "NOT_POSSIBLE" ? `, at most ${kwh(v.best_kwh)} reachable` : "")
    : "no stated need");

  function needsCell(t) {
    const v = S.needs.get(String(t.id));
    const [flag, cls] = needFlag(v);
    const target = t.energy_target_wh != null ? kwh(t.energy_target_wh / 1000) : "";
    const what = target || t.departure_at
      ? `${target || "?"}${t.departure_at ? " by " + time(t.departure_at) : ""}` : "";
    const tip = needTip(v);
    return `<td class="needs" title="${esc(tip)}">${what ? `<span>${esc(what)}</span> ` : ""}` +
      `<span class="need-flag ${cls}">${esc(flag)}</span></td>`;
  }

  function txRow(t) {
    const state = v2xState(t);
    return `<tr data-tx="${esc(t.id)}"${t.priority ? ' class="is-priority"' : ""}>
      <th scope="row">${esc(t.station_id)}<div class="sub">EVSE ${esc(t.evse_id ?? DASH)}</div></th>
      <td>${esc(t.id_token || DASH)}</td>
      <td class="nowrap">${esc(time(t.started_at))}</td>
      <td class="power num" title="${esc(t.charging_state || "")}">${kw(wh(t.power_w))}</td>
      <td class="energy-in num">${kwh(wh(t.energy_imported_wh))}</td>
      <td class="energy-out num">${kwh(wh(t.energy_exported_wh))}</td>
      <td class="soc num">${pct(t.soc_percent)}</td>
      <td class="nowrap">${esc(time(t.departure_at))}</td>
      ${needsCell(t)}
      <td class="v2x-state v2x-${state}" title="${t.v2x_allowed ? "driver allows V2X" : "V2X not allowed"}">${state}</td>
      <td class="priority-flag">${t.priority ? '<span class="badge badge-priority">★ priority</span>' : `<span class="muted">${DASH}</span>`}</td>
      <td class="actions"><div class="btns">${btn("priority", t.priority ? "End priority" : "Priority", "btn-priority")}${btn("stop", "Stop", "btn-stop btn-danger")}</div></td>
    </tr>`;
  }

  function renderSessions() {
    const txs = S.txs;
    const power = txs.reduce((a, t) => a + (t.power_w || 0), 0) / 1000;
    const risk = txs.filter((t) => {
      const v = S.needs.get(String(t.id));
      return !!v && v.status === "NOT_POSSIBLE";
    }).length;
    $("#sessions-summary").innerHTML = summary([
      ["Active sessions", String(txs.length)],
      ["Net EV power", kw(power)],
      ["Needs at risk", String(risk), risk ? "bad" : ""],
    ]);
    $("#sessions-body").innerHTML =
      S.notices.map((n) => `<p class="alert alert-warn">${esc(n)}</p>`).join("") +
      table("sessions-table", "Active charging sessions",
        ["Station", "ID token", "Started", "Power", "Energy in", "Energy out", "SoC", "Departure",
          "Driver needs", "V2X", "Priority", "Actions"],
        txs.map(txRow), "No active charging sessions.");
  }

  /* ---------- sites ---------- */

  function renderSites() {
    $("#sites-body").innerHTML = S.sites.length ? `<ul class="cards" id="sites-list">${S.sites.map((s) => `
      <li class="card site-card" data-site="${esc(s.id)}">
        <h2><a href="#/sites/${enc(s.id)}">${esc(s.name || "Site " + s.id)}</a></h2>
        <dl class="kv">${figures([
          ["Import limit", kw(s.import_limit_kw), "data-field", "import_limit_kw"],
          ["Export limit", kw(s.export_limit_kw), "data-field", "export_limit_kw"],
          ["Policy", s.policy || DASH, "data-field", "policy"],
          ["Objective", s.objective || DASH, "data-field", "objective"],
          ["Stations", String((s.stations || []).length), "data-field", "stations"],
        ])}</dl>
        <a class="site-circuits" href="#/sites/${enc(s.id)}/circuits">Circuit view</a>
      </li>`).join("")}</ul>` : '<p class="muted">No sites configured.</p>';
  }

  /* ---------- one site: figures, chart, KPIs, limit, plan vehicles ---------- */

  const tsec = (iso) => {
    const d = EV.toDate(iso);
    return d ? d.getTime() / 1000 : null;
  };
  const neg = (v) => (v == null ? null : -v);

  // s: value from a history sample; f: value from a plan slot (future).
  const SERIES = [
    { label: "Net import (+) / export (\u2212)", color: "--c-net", width: 2.5, s: (p) => p.net_kw },
    { label: "EV charging", color: "--c-ev-in", fill: true, s: (p) => p.ev_import_kw },
    { label: "EV discharging", color: "--c-ev-out", fill: true, s: (p) => neg(p.ev_export_kw) },
    { label: "PV", color: "--c-pv", s: (p) => p.pv_kw },
    { label: "Uncontrolled load", color: "--c-load", s: (p) => p.base_load_kw },
    { label: "Import limit", color: "--c-limit", dash: [8, 5], step: true,
      s: (p) => p.import_limit_kw, f: (sl) => sl.import_limit_kw },
    { label: "Export limit", color: "--c-limit", dash: [2, 4], step: true, optional: true,
      s: (p) => neg(p.export_limit_kw) },
    { label: "Planned net import", color: "--c-plan", dash: [6, 4], width: 2, step: true,
      f: (sl) => (sl.import_kw ?? 0) - (sl.export_kw ?? 0) },
    { label: "Price", color: "--c-price", step: true, scale: "price",
      s: (p) => p.price, f: (sl) => sl.import_price },
  ];

  function chartDefs() {
    const hasExport = S.site.export_limit_kw != null || S.hist.some((p) => p.export_limit_kw != null);
    return SERIES.filter((d) => !d.optional || hasExport);
  }

  function currentX() {
    const last = S.hist[S.hist.length - 1];
    return (last && tsec(last.at)) || (S.plan && tsec(S.plan.at)) || Date.now() / 1000;
  }

  /** Aligned uPlot data: history rows up to now, then the plan's slots ahead of now. */
  function chartData(defs) {
    const rows = new Map();
    const put = (x, fill) => {
      let r = rows.get(x);
      if (!r) rows.set(x, (r = new Array(defs.length).fill(null)));
      defs.forEach((d, i) => { const v = fill(d); if (v !== undefined) r[i] = v ?? null; });
    };
    for (const p of S.hist) {
      const x = tsec(p.at);
      if (x != null) put(x, (d) => (d.s ? d.s(p) : undefined));
    }
    const now = (S.nowX = currentX());
    const slotS = (S.plan && S.plan.slot_s) || 900;
    let last = null;
    for (const sl of (S.plan && S.plan.slots) || []) {
      const start = tsec(sl.start);
      if (start == null || start + slotS <= now) continue;
      put(Math.max(start, now), (d) => (d.f ? d.f(sl) : undefined));
      last = { end: start + slotS, sl };
    }
    if (last) put(last.end, (d) => (d.f ? d.f(last.sl) : undefined));
    const xs = [...rows.keys()].sort((a, b) => a - b);
    return [xs, ...defs.map((_, i) => xs.map((x) => rows.get(x)[i]))];
  }

  function renderChart() {
    const el = $("#site-chart");
    if (!el) return;
    const defs = chartDefs();
    const data = chartData(defs);
    const key = defs.map((d) => d.label).join("|");
    if (S.chart && S.chartKey === key) {
      const u = S.chart;
      const xs = u.data[0];
      const zoomed = xs.length > 1 && (u.scales.x.min > xs[0] + 1 || u.scales.x.max < xs[xs.length - 1] - 1);
      u.setData(data, !zoomed);
      return;
    }
    if (S.chart) S.chart.destroy();
    el.textContent = "";
    const stepped = uPlot.paths.stepped({ align: 1 });
    const kwVal = (u, v) => (v == null ? DASH : num(v, 1, "kW"));
    S.chartKey = key;
    S.chart = EV.chart(el, {
      height: 340,
      cursor: { drag: { x: true, y: false } },
      legend: { live: true },
      scales: { x: { time: true } },
      series: [{ label: "Time", value: (u, v) => (v == null ? DASH : new Date(v * 1000).toLocaleString()) },
        ...defs.map((d) => {
          const c = EV.cssVar(d.color);
          return {
            label: d.label, stroke: c, width: d.width || 1.5, spanGaps: true,
            scale: d.scale || "kW", dash: d.dash, fill: d.fill ? c + "26" : undefined,
            paths: d.step ? stepped : undefined, points: { show: false },
            value: d.scale === "price" ? (u, v) => (v == null ? DASH : num(v, 3)) : kwVal,
          };
        })],
      axes: [
        EV.axis(),
        EV.axis({ scale: "kW", label: "kW", size: 56 }),
        EV.axis({ scale: "price", side: 1, label: "price per kWh", size: 72, grid: { show: false },
          values: (u, vals) => vals.map((v) => v.toFixed(2)) }),
      ],
      hooks: { draw: [EV.nowMarker(() => S.nowX)] },
    }, data);
  }

  function renderSiteInfo() {
    const s = S.site;
    const name = s.name || "Site " + s.id;
    document.title = name + " · evflex";
    $("#site-crumb").textContent = name;
    $("#site-name").textContent = name;
    $("#site-meta").innerHTML = [
      `policy <strong>${esc(s.policy || DASH)}</strong>`,
      `objective <strong>${esc(s.objective || DASH)}</strong>`,
      `import limit <strong>${esc(kw(s.import_limit_kw))}</strong>`,
      s.export_limit_kw != null ? `export limit <strong>${esc(kw(s.export_limit_kw))}</strong>` : "",
      `tariff ${esc(perKwh(s.import_tariff_per_kwh))} import / ${esc(perKwh(s.export_tariff_per_kwh))} export`,
      `${(s.stations || []).length} station${(s.stations || []).length === 1 ? "" : "s"}`,
    ].filter(Boolean).join(" · ");
    renderLimitForm(s);
    renderNow(); // the limit in force now is the site's, whether from an answer or an event
  }

  function renderNow() {
    const p = S.hist[S.hist.length - 1] || {};
    $("#site-now").innerHTML = figures([
      ["Net import", kw(p.net_kw), "data-now", "net_kw", p.net_kw < 0 ? "exporting" : ""],
      ["EV charging", kw(p.ev_import_kw), "data-now", "ev_import_kw"],
      ["EV discharging", kw(p.ev_export_kw), "data-now", "ev_export_kw"],
      ["PV", kw(p.pv_kw), "data-now", "pv_kw"],
      ["Uncontrolled load", kw(p.base_load_kw), "data-now", "base_load_kw"],
      ["Import limit", kw(S.site.import_limit_kw ?? p.import_limit_kw), "data-now", "import_limit_kw"],
      ["Price", perKwh(p.price), "data-now", "price"],
    ]);
    $("#site-now-at").textContent = p.at ? "as of " + dateTime(p.at) : "no measurements yet";
  }

  function renderVehicles() {
    const vs = (S.plan && S.plan.vehicles) || [];
    const planAt = S.plan ? `Plan computed ${dateTime(S.plan.at)}${S.plan.applied === false ? " (not applied: the site's policy does not use it)" : ""}.`
      : S.planError ? `Plan unavailable: ${S.planError}` : "No plan yet.";
    $("#plan-vehicles-body").innerHTML = `<p class="muted small">${esc(planAt)}</p>` +
      table("plan-vehicles", "Vehicles in the site plan", ["Station / EVSE", "Still needed", "Planned by departure", "Status"],
        vs.map((v) => {
          const verdict = (S.siteNeeds || new Map()).get(`${v.station_id}|${v.evse_id}`);
          const [flag, cls] = needFlag(verdict);
          // A stated need shows the verdict's figures (the plan really applied); a plan that
          // is not applied says nothing about a session without one.
          const stated = verdict && verdict.status !== "NO_NEEDS";
          const need = stated ? kwh(verdict.need_kwh)
            : S.plan.applied === false ? DASH
            : `${kwh(v.need_kwh)} <span class="sub">estimated</span>`;
          const planned = stated ? kwh(verdict.expected_kwh)
            : S.plan.applied === false ? DASH : kwh(v.planned_kwh);
          return `<tr title="${esc(needTip(verdict))}"><th scope="row">${esc(v.station_id)} / ${esc(v.evse_id)}</th>
            <td class="num">${need}</td>
            <td class="num">${planned}</td>
            <td><span class="need-flag ${cls}">${esc(flag)}</span></td></tr>`;
        }), "No vehicles in the plan.");
  }

  const pct1 = (v) => num(v, 1, "%");
  const KPI_TILES = [
    ["Energy imported", "energy_imported_kwh", kwh],
    ["Energy exported", "energy_exported_kwh", kwh],
    ["Cost", "cost", money, (k) => `vs ${k("cost_uncontrolled", money)} uncontrolled`],
    ["Cost saving", "cost_saving_pct", pct1],
    ["Peak import", "peak_kw", kw, (k) => `vs ${k("peak_uncontrolled_kw", kw)} uncontrolled`],
    ["Peak reduction", "peak_reduction_pct", pct1],
    ["Drivers served", "drivers_served_pct", pct1,
      (k) => `${k("drivers_served", (v) => num(v, 0))} of ${k("drivers_with_needs", (v) => num(v, 0))} with stated needs`],
    ["PV self-consumption", "pv_self_consumption_pct", pct1, (k) => `of ${k("pv_kwh", kwh)} PV`],
    ["Sessions", "sessions", (v) => num(v, 0)],
  ];

  async function loadKpis() {
    const box = $("#kpi-body");
    const site = S.site;
    if (!box || !site) return;
    const period = S.kpiPeriod;
    box.setAttribute("aria-busy", "true");
    try {
      const k = await api(`/api/v1/sites/${enc(site.id)}/kpis?period=${period}`);
      if (S.site !== site || S.kpiPeriod !== period || !box.isConnected) return;
      const span = (key, fmt) => `<span data-kpi="${key}">${esc(fmt(k[key]))}</span>`;
      box.innerHTML = `<p class="muted small">${esc(dateTime(k.from))} – ${esc(dateTime(k.to))}</p>
        <ul class="kpi-grid">${KPI_TILES.map(([label, key, fmt, sub]) => `<li>
          <span class="kpi-label">${esc(label)}</span>
          <span class="kpi-value" data-kpi="${key}">${esc(fmt(k[key]))}</span>
          ${sub ? `<span class="kpi-sub">${sub(span)}</span>` : ""}</li>`).join("")}</ul>`;
    } catch (e) {
      box.innerHTML = `<p class="alert alert-error">Could not load KPIs: ${esc(e.detail || e.message)}</p>`;
    } finally {
      box.removeAttribute("aria-busy");
    }
  }

  function renderLimitForm(s) {
    const input = $("#limit-input");
    if (!input) return;
    // a limit written in the configuration file ([[sites]]) is changed there, not here
    const managed = (s.managed_by_config || []).includes("import_limit_kw");
    $("#limit-managed").hidden = !managed;
    input.disabled = managed;
    const apply = $("#limit-apply");
    apply.disabled = managed || !canAct();
    apply.title = managed ? "set in the configuration file" : canAct() ? "" : "needs operator role";
    if (document.activeElement !== input && !input.dataset.dirty) input.value = s.import_limit_kw ?? "";
  }

  async function applyLimit(ev) {
    ev.preventDefault();
    const input = $("#limit-input");
    const out = $("#limit-result");
    const v = input.valueAsNumber;
    out.className = "form-result";
    if (!Number.isFinite(v) || v < 0) {
      out.textContent = "Enter a limit in kW (0 or more).";
      out.classList.add("error");
      return;
    }
    const site = S.site;
    const ok = await confirmDialog(
      `Change the import limit of ${site.name || "site " + site.id} from ${kw(site.import_limit_kw)} to ${kw(v)}?`,
      "", "Apply limit");
    if (!ok) return;
    try {
      const r = await api(`/api/v1/sites/${enc(site.id)}`, { method: "PATCH", body: { import_limit_kw: v } });
      if (S.site && String(S.site.id) === String(r.id)) S.site = r;
      delete input.dataset.dirty;
      out.textContent = `Saved: import limit is now ${kw(r.import_limit_kw)}.`;
      out.classList.add("ok");
      toast(`Import limit of ${r.name || r.id}: ${kw(r.import_limit_kw)}`);
      if (S.view === views.site) renderSiteInfo();
    } catch (e) {
      out.textContent = "Not changed: " + (e.detail || e.message);
      out.classList.add("error");
      toast("Limit change failed: " + (e.detail || e.message), "error");
    }
  }

  function onSample(d) {
    if (S.view !== views.site || !S.site || String(d.site_id) !== String(S.site.id)) return;
    S.hist.push(d);
    if (S.hist.length > MAX_POINTS) S.hist.splice(0, S.hist.length - MAX_POINTS);
    renderNow();
    renderChart();
  }

  const siteChanged = debounce(async () => {
    const view = S.view;
    const site = S.site;
    if (view !== views.site || !site) return;
    try {
      const [sites, plan, needs] = await Promise.all([api("/api/v1/sites"), planOrError(site.id),
        api(`/api/v1/needs?site_id=${enc(site.id)}`).catch(() => [])]);
      if (S.view !== view || S.site !== site) return;
      S.siteNeeds = new Map(needs.map((v) => [`${v.station_id}|${v.evse_id}`, v]));
      S.sites = sites;
      S.site = sites.find((s) => String(s.id) === String(site.id)) || site;
      S.plan = plan;
      renderSiteInfo();
      renderChart();
      renderVehicles();
    } catch (e) {
      toast("Could not reload the site: " + (e.detail || e.message), "error");
    }
  }, 500);

  /* ---------- events ---------- */

  const KIND_LABELS = { [SECURITY]: "Security: refused attempts", security: "Security: station reports" };
  const isSecurity = (kind) => (kind || "").toLowerCase() === "security";

  /** The detail cell: a refused attempt reads as its reason, then what else it carries. */
  function eventDetail(e) {
    const d = e.detail || {};
    if (e.kind !== SECURITY) return e.detail == null ? "" : JSON.stringify(e.detail);
    const rest = Object.entries(d).filter(([k]) => k !== "source" && k !== "reason")
      .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
    return [d.reason, ...rest].filter(Boolean).join(" · ");
  }

  function renderEvents() {
    const sel = $("#events-kind");
    const known = new Set([...sel.options].map((o) => o.value));
    [...S.kinds].sort().forEach((k) => {
      if (!known.has(k)) sel.add(new Option(KIND_LABELS[k] || k, k));
    });
    sel.value = S.eventsKind;
    $("#events-body").innerHTML = table("events-table", "Event log", ["Time", "Station", "Kind", "Type", "Source", "Detail"],
      S.events.map((e) => {
        const text = eventDetail(e);
        const short = text.length > 400 ? text.slice(0, 400) + "…" : text;
        const source = e.detail && typeof e.detail.source === "string" ? e.detail.source : "";
        return `<tr data-event="${esc(e.id)}" class="kind-${esc((e.kind || "").toLowerCase())}">
          <td class="nowrap">${esc(dateTime(e.timestamp))}</td>
          <td>${esc(e.station_id || DASH)}</td>
          <td><span class="badge ${isSecurity(e.kind) ? "badge-bad" : "badge-neutral"}">${esc(e.kind || DASH)}</span></td>
          <td>${esc(e.type || DASH)}</td>
          <td class="nowrap source">${esc(source || DASH)}</td>
          <td class="detail"><code title="${esc(short !== text ? text : "")}">${esc(short || DASH)}</code></td>
        </tr>`;
      }), "No events.");
  }

  /* ---------- views and router ---------- */

  const views = {
    fleet: {
      re: /^#\/fleet$/, nav: "#/fleet", title: "Fleet",
      skeleton: () => '<h1>Fleet</h1><ul class="summary" id="fleet-summary"></ul><div id="fleet-body"></div>',
      async load() {
        S.stations = await api("/api/v1/stations");
        S.stationsAt = Date.now();
      },
      render: renderFleet,
    },
    sessions: {
      re: /^#\/sessions$/, nav: "#/sessions", title: "Sessions",
      skeleton: () => '<h1>Active sessions</h1><ul class="summary" id="sessions-summary"></ul><div id="sessions-body"></div>',
      async load() {
        const txs = await api("/api/v1/transactions?active=true");
        // Verdicts come from the plans: fetch them again only after events that change them.
        if (S.plansStale || Date.now() - S.plansAt > PLAN_MAX_AGE_MS) {
          const notices = [];
          const needs = await api("/api/v1/needs").catch((e) => {
            notices.push(`Needs status unavailable (${e.detail || e.message}).`);
            return [];
          });
          S.needs = new Map(needs.map((v) => [String(v.transaction), v]));
          S.notices = notices;
          S.plansStale = false;
          S.plansAt = Date.now();
        }
        S.txs = txs;
      },
      render: renderSessions,
    },
    sites: {
      re: /^#\/sites$/, nav: "#/sites", title: "Sites",
      skeleton: () => '<h1>Sites</h1><div id="sites-body"></div>',
      async load() { S.sites = await api("/api/v1/sites"); },
      render: renderSites,
    },
    site: {
      re: /^#\/sites\/([^/]+)$/, nav: "#/sites", title: "Site",
      skeleton: () => `
        <p class="crumbs"><a href="#/sites">Sites</a> / <span id="site-crumb"></span></p>
        <h1 id="site-name">Site</h1>
        <p id="site-meta" class="muted"></p>
        <p><a id="site-circuits" href="#/sites/${enc(S.params[0])}/circuits">Circuit view</a>: load per phase and why an EVSE is held back</p>
        <section class="card" aria-labelledby="now-h">
          <h2 id="now-h">Now <small id="site-now-at" class="muted"></small></h2>
          <dl id="site-now" class="figures"></dl>
        </section>
        <section class="card" aria-labelledby="chart-h">
          <h2 id="chart-h">Power, last 24 h and plan ahead</h2>
          <div id="site-chart" class="chart" role="img" aria-label="Chart of site power, limits, price and the planned net import"></div>
          <p class="muted small">Positive = import from the grid, negative = export. Dashed lines after “now” are the plan. Drag to zoom, double-click to reset.</p>
        </section>
        <div class="grid-2">
          <section id="kpis" class="card" aria-labelledby="kpi-h">
            <div class="section-head"><h2 id="kpi-h">KPIs</h2>
              <label class="inline">Period
                <select id="kpi-period"><option value="day">Day</option><option value="week">Week</option><option value="month">Month</option></select>
              </label></div>
            <div id="kpi-body" aria-live="polite"></div>
          </section>
          <section class="card" aria-labelledby="limit-h">
            <h2 id="limit-h">Site import limit</h2>
            <form id="limit-form" class="inline-form">
              <label for="limit-input">Import limit (kW)</label>
              <div class="row">
                <input id="limit-input" type="number" min="0" step="0.1" inputmode="decimal" required>
                ${canAct() ? '<button id="limit-apply" class="btn btn-primary" type="submit">Apply</button>'
                  : '<button id="limit-apply" class="btn btn-primary" type="submit" disabled title="needs operator role">Apply</button>'}
              </div>
              <p id="limit-managed" class="form-result" hidden>Set in the configuration file
                (<code>[[sites]]</code>): change it there and restart evflex.</p>
              <p id="limit-result" class="form-result" role="status"></p>
            </form>
          </section>
        </div>
        <section class="card" aria-labelledby="veh-h">
          <h2 id="veh-h">Vehicles in the plan</h2>
          <div id="plan-vehicles-body"></div>
        </section>`,
      mount() {
        $("#kpi-period").value = S.kpiPeriod;
        $("#kpi-period").addEventListener("change", (e) => { S.kpiPeriod = e.target.value; loadKpis(); });
        $("#limit-form").addEventListener("submit", applyLimit);
        $("#limit-input").addEventListener("input", (e) => { e.target.dataset.dirty = "1"; });
      },
      async load(id) {
        const [sites, hist, plan, needs] = await Promise.all([
          api("/api/v1/sites"), api(`/api/v1/sites/${enc(id)}/history?hours=24`), planOrError(id),
          api(`/api/v1/needs?site_id=${enc(id)}`).catch(() => [])]);
        S.siteNeeds = new Map(needs.map((v) => [`${v.station_id}|${v.evse_id}`, v]));
        const site = sites.find((s) => String(s.id) === String(id));
        if (!site) throw new EV.ApiError(404, `Site ${id} not found.`);
        const first = !S.site || String(S.site.id) !== String(site.id);
        S.sites = sites;
        S.site = site;
        S.plan = plan;
        S.hist = ((hist && hist.samples) || []).slice(-MAX_POINTS);
        if (first || !$("#kpi-body").childElementCount) loadKpis();
      },
      render() {
        renderSiteInfo();
        renderChart();
        renderVehicles();
      },
    },
    events: {
      re: /^#\/events$/, nav: "#/events", title: "Events", delay: 1000,
      skeleton: () => `<div class="section-head"><h1>Events</h1>
        <label class="inline">Kind <select id="events-kind"><option value="">All</option></select></label></div>
        <nav class="event-tabs" aria-label="Event views"><a href="#/events" aria-current="page">Station events</a>
        <a href="#/audit">Audit trail</a></nav>
        <div id="events-body"></div>`,
      mount() {
        $("#events-kind").addEventListener("change", (e) => { S.eventsKind = e.target.value; views.events.refresh(); });
      },
      async load() {
        const kind = S.eventsKind;
        S.events = await api(`/api/v1/events?limit=200${kind ? "&kind=" + enc(kind) : ""}`);
        S.events.forEach((e) => e.kind && S.kinds.add(e.kind));
      },
      render: renderEvents,
    },
  };

  function setError(text) {
    const box = $("#view-error");
    if (!box) return;
    box.hidden = !text;
    box.textContent = text ? "Could not load: " + text : "";
  }

  async function refresh(view) {
    if (S.view !== view) return;
    const gen = S.gen;
    const seq = (view.seq = (view.seq || 0) + 1);
    main.setAttribute("aria-busy", "true");
    try {
      await view.load(...S.params);
      if (gen !== S.gen || seq !== view.seq) return;
      setError("");
      const key = focusKey(document.activeElement);
      view.render();
      refocus(key);
    } catch (e) {
      if (gen === S.gen) setError(e.detail || e.message);
    } finally {
      if (gen === S.gen) main.removeAttribute("aria-busy");
    }
  }
  const withRefresh = (v) => { v.refresh = debounce(() => refresh(v), v.delay || 500); return v; };
  Object.values(views).forEach(withRefresh);

  function show(ev) {
    const hash = location.hash || "#/fleet";
    const view = Object.values(views).find((v) => v.re.test(hash));
    if (!view) { location.replace("#/fleet"); return; }
    if (S.chart) { S.chart.destroy(); S.chart = null; }
    S.site = null;
    S.plansStale = true;
    S.view = view;
    S.params = hash.match(view.re).slice(1).map(decodeURIComponent);
    S.gen += 1;
    document.title = view.title + " · evflex";
    document.querySelectorAll(".topbar nav a").forEach((a) => {
      if (a.getAttribute("href") === view.nav) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    });
    main.innerHTML = '<div id="view-error" class="alert alert-error" role="alert" hidden></div>' + view.skeleton();
    if (view.mount) view.mount();
    if (ev) main.focus({ preventScroll: true });
    refresh(view);
  }

  main.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-action]");
    const row = b && b.closest("tr");
    if (b && !b.disabled && row && ACTIONS[b.dataset.action]) ACTIONS[b.dataset.action](row.dataset);
  });

  /** ChangeAvailability for the whole station (EVSE 0); "Scheduled" is remembered until the
   * station's connectors report the change (or it is undone). */
  async function setAvailability(station, operative) {
    const ok = await confirmDialog(operative
      ? `Set station ${station} operative? It will accept new charging sessions again.`
      : `Set station ${station} inoperative? It will not accept new charging sessions; a running session ends first.`,
    "", operative ? "Set operative" : "Set inoperative");
    if (!ok) return;
    await run(`Set ${station} ${operative ? "operative" : "inoperative"}`, async () => {
      const r = await command(station, "change-availability", { operative, evse: 0 });
      const status = (r && r.response && r.response.status) || "";
      if (!operative && /^scheduled$/i.test(status)) S.availPending.set(String(station), "inoperative");
      else if (/^(accepted|scheduled)$/i.test(status)) S.availPending.delete(String(station));
      return r;
    }, () => { renderIfFleet(); views.fleet.refresh(); });
  }
  const renderIfFleet = () => { if (S.view === views.fleet) renderFleet(); };

  const ACTIONS = {
    async reset({ station }) {
      const f = await confirmDialog(`Reset station ${station}?`, `
        <fieldset class="choices"><legend>Reset type</legend>
          <label><input type="radio" name="type" value="soft" checked> Soft — restart the software</label>
          <label><input type="radio" name="type" value="hard"> Hard — reboot the charger</label>
        </fieldset>`, "Reset");
      if (!f) return;
      const type = f.get("type");
      await run(`Reset (${type}) ${station}`, () => command(station, "reset", { type }), views.fleet.refresh);
    },
    operative: ({ station }) => setAvailability(station, true),
    inoperative: ({ station }) => setAvailability(station, false),
    async start({ station }) {
      const s = findStation(station);
      const evses = s ? [...new Set(evseConnectors(s).map((c) => c.evse_id))].sort((a, b) => a - b) : [];
      const f = await confirmDialog(`Start a charging session on station ${station}?`, `
        <div class="field"><label for="start-token">ID token</label>
          <input id="start-token" name="id_token" required autocomplete="off" spellcheck="false"></div>
        <div class="field"><label for="start-evse">EVSE</label>
          <select id="start-evse" name="evse"><option value="">Any (station chooses)</option>
          ${evses.map((e) => `<option value="${esc(e)}">${esc(e)}</option>`).join("")}</select></div>`, "Start");
      if (!f) return;
      const body = { id_token: String(f.get("id_token")).trim() };
      if (f.get("evse")) body.evse = Number(f.get("evse"));
      await run(`Remote start on ${station}`, () => command(station, "remote-start", body), views.fleet.refresh);
    },
    async priority({ tx }) {
      const t = findTx(tx);
      if (!t) return;
      const on = !t.priority;
      const ok = await confirmDialog(on
        ? `Give the session on ${txLabel(t)} priority? It will charge as fast as the site allows.`
        : `End priority for the session on ${txLabel(t)}?`, "", on ? "Set priority" : "End priority");
      if (!ok) return;
      await run(`${on ? "Priority" : "End priority"} ${txLabel(t)}`,
        () => api(`/api/v1/transactions/${enc(t.id)}/priority`, { method: on ? "POST" : "DELETE" }),
        views.sessions.refresh);
    },
    async stop({ tx }) {
      const t = findTx(tx);
      if (!t) return;
      const ok = await confirmDialog(`Stop the charging session on ${txLabel(t)} (transaction ${t.transaction_id})?`, "", "Stop session");
      if (!ok) return;
      await run(`Stop ${txLabel(t)}`,
        () => command(t.station_id, "remote-stop", { transaction_id: String(t.transaction_id) }),
        views.sessions.refresh);
    },
  };

  /* ---------- live stream ---------- */

  const TOPICS = ["station.connected", "station.disconnected", "station.booted", "connector.status",
    "transaction.started", "transaction.updated", "transaction.ended", "meter.values",
    "ev.charging_needs", "transaction.priority", "site.sample", "site.changed", "station.security",
    `station.${SECURITY}`, "station.notify"];

  /** Functions called with (topic, message) for every live event, whatever the view. */
  const LISTENERS = [];

  function onEvent(topic, raw) {
    let msg = {};
    try { msg = JSON.parse(raw.data) || {}; } catch { /* not JSON: still refresh below */ }
    const v = S.view;
    if (topic === "site.sample") { onSample(msg.data || {}); if (v && v.onEvent) v.onEvent(topic, msg); return; }
    const is = (re) => re.test(topic);
    if (!/^(meter\.values|transaction\.updated)$/.test(topic)) S.plansStale = true;
    if (v === views.fleet && is(/^(station|connector)\./)) v.refresh();
    if (v === views.sessions && (is(/^transaction\./) || is(/^(meter\.values|ev\.charging_needs|site\.changed)$/))) v.refresh();
    if (v === views.sites && topic === "site.changed") v.refresh();
    if (v === views.site && topic === "site.changed") {
      const id = msg.data && msg.data.site_id;
      if (id == null || !S.site || String(id) === String(S.site.id)) siteChanged();
    }
    if (v === views.events) v.refresh();
    if (topic === "message" && v !== views.site && v !== views.events) v.refresh();
    if (v && v.onEvent) v.onEvent(topic, msg);
    LISTENERS.forEach((fn) => fn(topic, msg));
  }

  function setLive(open) {
    const el = $("#live-status");
    el.textContent = open ? "live" : "reconnecting…";
    el.className = "live-status " + (open ? "is-live" : "is-down");
  }

  function connect() {
    const es = new EventSource("/api/v1/stream");
    let dropped = false;
    es.onopen = () => {
      setLive(true);
      if (dropped && S.view) S.view.refresh();
      dropped = false;
    };
    es.onerror = () => {
      dropped = true;
      setLive(false);
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. the server refused the stream): check the login, then retry.
        setTimeout(() => api("/api/v1/auth/me").then(connect, () => setTimeout(connect, 10000)), 5000);
      }
    };
    TOPICS.forEach((t) => es.addEventListener(t, (ev) => onEvent(t, ev)));
    es.onmessage = (ev) => onEvent("message", ev);
  }

  $("#logout").addEventListener("click", async () => {
    try {
      await api("/api/v1/auth/logout", { method: "POST" });
      location.assign("/login");
    } catch (e) {
      toast("Logout failed: " + (e.detail || e.message), "error");
    }
  });

  async function start() {
    try {
      S.me = await api("/api/v1/auth/me");
    } catch (e) {
      if (e.status !== 401) {
        main.innerHTML = `<p class="alert alert-error" role="alert">Could not load your account: ${esc(e.detail || e.message)}</p>`;
        main.removeAttribute("aria-busy");
      }
      return;
    }
    S.csrf = S.me.csrf_token || "";
    $("#whoami").innerHTML = `${esc(S.me.username)} <span class="role role-${esc(S.me.role)}">${esc(S.me.role)}</span>`;
    window.addEventListener("hashchange", show);
    show();
    connect();
    setInterval(tickAges, 1000);
  }

  const isAdmin = () => !!S.me && S.me.role === "admin";

  /* ---------- a secret the server shows once (TOTP key, API token, OCPI token A) ---------- */

  async function copyValue(input) {
    try {
      await navigator.clipboard.writeText(input.value);
    } catch {
      input.select();
      document.execCommand("copy");
    }
    toast("Copied to the clipboard");
  }

  /** Show ``items`` ([label, value]) in ``box`` with copy buttons, kept on screen until
   * dismissed; the values' inputs are #{prefix}-0, #{prefix}-1 ...; #{prefix}-{focus} gets the focus. */
  function showSecret(box, title, items, note, prefix = "secret", focus = 0) {
    if (!box) return;
    box.innerHTML = `<h2>${esc(title)}</h2><p class="alert alert-warn">${esc(note)}</p>` +
      items.map(([label, value], i) => `<div class="field"><label for="${prefix}-${i}">${esc(label)}</label>
        <div class="row"><input id="${prefix}-${i}" class="secret-value" readonly spellcheck="false" value="${esc(value)}">
        <button type="button" class="btn btn-small" data-copy="${prefix}-${i}">Copy</button></div></div>`).join("") +
      '<button type="button" class="btn" data-dismiss>Done, hide it</button>';
    box.hidden = false;
    $(`#${prefix}-${focus}`).focus();
    if (box.dataset.secretBox) return;
    box.dataset.secretBox = "1";
    box.addEventListener("click", (ev) => {
      const c = ev.target.closest("[data-copy]");
      if (c) copyValue(document.getElementById(c.dataset.copy));
      if (ev.target.closest("[data-dismiss]")) {
        box.innerHTML = "";
        box.hidden = true;
      }
    });
  }

  /* ---------- the registry the other views (static/views/*.js) use ---------- */

  EV.app = {
    S, $, enc, api, command, run, toast, confirmDialog, btn, table, summary, canAct, isAdmin,
    showSecret,
    views, ACTIONS, TOPICS, LISTENERS, show,
    /** Add a view: {re, nav, title, skeleton(), load(...params), render(), mount?(), onEvent?(topic, msg)}. */
    register(name, view) { views[name] = withRefresh(view); return view; },
    /** Add row actions: buttons with data-action="name" inside a <tr> call fn(row.dataset). */
    actions(map) { Object.assign(ACTIONS, map); },
    /** Listen to live topics (added to the stream before it opens) on every view. */
    listen(topics, fn) { topics.forEach((t) => TOPICS.includes(t) || TOPICS.push(t)); LISTENERS.push(fn); },
    get me() { return S.me; },
  };

  // The view scripts load after this one; start once they have registered.
  document.addEventListener("DOMContentLoaded", start);
})();
