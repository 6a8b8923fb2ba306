/* evflex operator app: the station page (#/stations/{id}): identity, connectors and their
 * availability, meter chart per EVSE, configuration (1.6 keys / 2.x device model), charging
 * profiles and the composite schedule, station commands, firmware and log uploads. */
(function () {
  "use strict";
  const { esc, num, dateTime, ago, debounce, figures, DASH } = EV;
  const A = EV.app;
  const { $, enc, api, command, run, toast, confirmDialog, canAct, isAdmin } = A;

  const PERIODS = [["900", "15 min"], ["3600", "1 h"], ["21600", "6 h"], ["86400", "24 h"]];
  const METER_LIMIT = 50000;
  const TRIGGERS = {
    "1.6": ["StatusNotification", "Heartbeat", "MeterValues", "BootNotification",
      "FirmwareStatusNotification", "DiagnosticsStatusNotification"],
    "2.x": ["StatusNotification", "Heartbeat", "MeterValues", "TransactionEvent", "BootNotification",
      "FirmwareStatusNotification", "LogStatusNotification", "SignChargingStationCertificate"],
  };
  /** 2.x variables read when no device model report is stored. */
  const DEFAULT_VARIABLES = [
    ["OCPPCommCtrlr", "HeartbeatInterval"], ["OCPPCommCtrlr", "OfflineThreshold"],
    ["OCPPCommCtrlr", "WebSocketPingInterval"], ["OCPPCommCtrlr", "ResetRetries"],
    ["SampledDataCtrlr", "Enabled"], ["SampledDataCtrlr", "TxUpdatedInterval"],
    ["SampledDataCtrlr", "TxUpdatedMeasurands"], ["SampledDataCtrlr", "TxEndedInterval"],
    ["AlignedDataCtrlr", "Interval"], ["AlignedDataCtrlr", "Measurands"],
    ["AuthCtrlr", "Enabled"], ["AuthCtrlr", "AuthorizeRemoteStart"], ["AuthCtrlr", "LocalAuthorizeOffline"],
    ["LocalAuthListCtrlr", "Enabled"], ["LocalAuthListCtrlr", "Entries"],
    ["TxCtrlr", "EVConnectionTimeOut"], ["TxCtrlr", "StopTxOnInvalidId"],
    ["SmartChargingCtrlr", "RateUnit"], ["SmartChargingCtrlr", "ProfileStackLevel"],
    ["SecurityCtrlr", "SecurityProfile"], ["SecurityCtrlr", "OrganizationName"],
    ["ClockCtrlr", "TimeSource"], ["ChargingStation", "AvailabilityState"],
  ];
  // live topics beyond the app's own; this view's onEvent handles them
  A.listen(["station.firmware", "station.upload", "station.report", "charging_profiles.report"], () => {});

  /** The page's state; reset when another station is shown. */
  let P = fresh(null, "3600");
  function fresh(id, period) {
    return {
      id, st: null, cfg: null, cfgError: "", cfgFilter: "", report: null, profiles: [], comp: null,
      period, meter: new Map(), meterFrom: null, meterCut: false,
      charts: new Map(), pending: new Map(), answers: new Map(), reservations: [], localVersion: null,
      uploads: null,
    };
  }

  const st = () => P.st || {};
  const is16 = () => st().ocpp_version === "1.6";
  const offline = () => (st().connected ? "" : "station is offline");
  const evses = () => [...new Set((st().connectors || []).map((c) => c.evse_id).filter((e) => e > 0))]
    .sort((a, b) => a - b);
  const cmd = (name, body) => command(P.id, name, body);
  const statusOf = (r) => (r && r.response && r.response.status) || "";

  /** A button for a command only admins may send (the API refuses operators). */
  function adminBtn(action, label, cls, reason = "") {
    const why = !isAdmin() ? "needs admin role" : reason;
    return `<button type="button" class="btn btn-small ${cls}" data-action="${action}"` +
      `${why ? ` disabled title="${esc(why)}"` : ""}>${esc(label)}</button>`;
  }
  const opBtn = (action, label, cls, reason = "") => A.btn(action, label, cls, reason || offline());
  const field = (id, label, input) => `<div class="field"><label for="${id}">${esc(label)}</label>${input}</div>`;
  const evseOptions = (any) => (any ? `<option value="">${esc(any)}</option>` : "") +
    evses().map((e) => `<option value="${e}">${e}</option>`).join("");

  /* ---------- identity ---------- */

  function renderIdentity() {
    const s = st();
    const fw = s.firmware_version || DASH;
    const sec = s.security_profile == null ? "1 (default)" : String(s.security_profile);
    const reached = s.security_profile_reached != null ? `reached ${s.security_profile_reached}` : "";
    const clock = s.clock_offset_s == null ? DASH : `${num(s.clock_offset_s, 1, "s")}${s.clock_skewed ? " (skewed)" : ""}`;
    document.title = `${s.id} · evflex`;
    $("#st-crumb").textContent = s.id;
    $("#st-conn").className = "badge " + (s.connected ? "badge-ok" : "badge-off");
    $("#st-conn").textContent = s.connected ? "online" : "offline";
    $("#st-identity").innerHTML = figures([
      ["OCPP version", s.ocpp_version || DASH, "data-id", "ocpp_version"],
      ["Vendor / model", [s.vendor, s.model].filter(Boolean).join(" ") || DASH, "data-id", "model"],
      ["Serial number", s.serial_number || DASH, "data-id", "serial_number"],
      ["Firmware", fw, "data-id", "firmware_version"],
      ["Security profile", sec, "data-id", "security_profile", reached],
      ["Site / circuit", `${s.site_id || DASH} / ${s.circuit_id || DASH}`, "data-id", "site"],
      ["Phases", s.phases == null ? DASH : String(s.phases), "data-id", "phases"],
      ["Registration", s.registration_status || DASH, "data-id", "registration_status"],
      ["Last heard", ago(s.heartbeat_age_s), "data-id", "age", s.last_heartbeat_at ? dateTime(s.last_heartbeat_at) : ""],
      ["Clock offset", clock, "data-id", "clock_offset_s"],
      ["Last boot", dateTime(s.last_boot_at), "data-id", "last_boot_at"],
    ]);
    P.ageAt = Date.now();
  }

  /* ---------- connectors and availability ---------- */

  const OFF = new Set(["Unavailable", "Inoperative"]);
  const CLS = { Available: "ok", Charging: "charging", Occupied: "busy", Preparing: "busy",
    SuspendedEV: "busy", SuspendedEVSE: "busy", Finishing: "busy", Reserved: "reserved",
    Unavailable: "off", Faulted: "error" };
  const availKey = (evse, connector) => `${evse}.${connector || 0}`;

  function availButtons(evse, connector, isOff) {
    const pending = P.pending.get(availKey(evse, connector));
    const b = [];
    if (isOff || pending === "inoperative") b.push(opBtn("stOperative", "Set operative", "btn-operative"));
    if (!isOff && pending !== "inoperative") b.push(opBtn("stInoperative", "Set inoperative", "btn-inoperative"));
    return { html: b.join(""), pending };
  }

  function connectorRow(c) {
    const err = c.error_code && c.error_code !== "NoError";
    const { html, pending } = availButtons(c.evse_id, c.connector_id, OFF.has(c.status));
    const cls = err || c.status === "Faulted" ? "error" : CLS[c.status] || "off";
    const answer = P.answers.get(availKey(c.evse_id, c.connector_id)) || "";
    return `<tr data-station="${esc(P.id)}" data-evse="${c.evse_id}" data-connector="${c.connector_id}">
      <th scope="row">EVSE ${c.evse_id}<div class="sub">connector ${c.connector_id}</div></th>
      <td><span class="connector conn-status st-${cls}">${esc(c.status || "Unknown")}</span>${pending
        ? `<span class="connector st-busy avail-pending" title="the station changes it when its session ends">Scheduled: ${esc(pending)}</span>` : ""}</td>
      <td>${esc(err ? c.error_code : DASH)}${c.info ? `<div class="sub">${esc(c.info)}</div>` : ""}${c.vendor_error_code ? `<div class="sub">vendor ${esc(c.vendor_error_code)}</div>` : ""}</td>
      <td class="nowrap">${esc(dateTime(c.status_at))}</td>
      <td class="avail-answer">${esc(answer || DASH)}</td>
      <td class="actions"><div class="btns">${html}${opBtn("stUnlock", "Unlock", "btn-unlock")}</div></td>
    </tr>`;
  }

  function renderConnectors() {
    const s = st();
    const conns = (s.connectors || []).filter((c) => c.evse_id > 0)
      .sort((a, b) => (a.evse_id - b.evse_id) || (a.connector_id - b.connector_id));
    const allOff = conns.length > 0 && conns.every((c) => OFF.has(c.status));
    const whole = availButtons(0, 0, allOff);
    const answer = P.answers.get(availKey(0, 0)) || "";
    const stationRow = `<tr data-station="${esc(P.id)}" data-evse="0" data-connector="0" class="station-row">
      <th scope="row">Whole station</th>
      <td>${allOff ? '<span class="connector st-off">Unavailable</span>' : `<span class="connector st-ok">${conns.length ? "in service" : DASH}</span>`}${whole.pending
        ? `<span class="connector st-busy avail-pending">Scheduled: ${esc(whole.pending)}</span>` : ""}</td>
      <td>${DASH}</td><td>${DASH}</td><td class="avail-answer">${esc(answer || DASH)}</td>
      <td class="actions"><div class="btns">${whole.html}</div></td></tr>`;
    $("#st-connectors").innerHTML = A.table("connectors-table", "Connectors and availability",
      ["Connector", "Status", "Error", "Since", "Last answer", "Actions"],
      [stationRow, ...conns.map(connectorRow)], "No connectors reported yet.");
  }

  async function setAvailability({ evse, connector }, operative) {
    const e = Number(evse);
    const what = e ? `EVSE ${e}${is16() ? "" : ` connector ${connector}`}` : `station ${P.id}`;
    const ok = await confirmDialog(`Set ${what} ${operative ? "operative" : "inoperative"}?` +
      (operative ? "" : " It will not accept new sessions; a running session ends first."), "",
    operative ? "Set operative" : "Set inoperative");
    if (!ok) return;
    const body = { operative, evse: e };
    if (e && !is16()) body.connector = Number(connector);
    const key = availKey(e, e ? connector : 0);
    await run(`Set ${what} ${operative ? "operative" : "inoperative"}`, async () => {
      const r = await cmd("change-availability", body);
      const status = statusOf(r);
      P.answers.set(key, status);
      if (/^scheduled$/i.test(status)) P.pending.set(key, operative ? "operative" : "inoperative");
      else P.pending.delete(key);
      return r;
    }, () => { renderConnectors(); view.refresh(); });
  }

  /* ---------- meter chart per EVSE ---------- */

  const secs = (iso) => new Date(iso).getTime() / 1000;

  /** Per EVSE: unix second -> {p (kW), l1..l3 (A), v (V, mean of phases), soc (%)}. */
  function addMeterRows(rows) {
    const vsum = new Map();
    for (const m of rows) {
      if (!P.meter.has(m.evse_id)) P.meter.set(m.evse_id, new Map());
      const pts = P.meter.get(m.evse_id);
      const x = Math.round(secs(m.timestamp));
      const pt = pts.get(x) || {};
      pts.set(x, pt);
      const kw = m.unit === "kW" ? m.value : m.value / 1000;
      if (m.measurand === "Power.Active.Import") pt.p = (pt.p || 0) + kw;
      else if (m.measurand === "Power.Active.Export") pt.p = (pt.p || 0) - kw;
      else if (m.measurand === "Current.Import") {
        const ph = /L[123]/.exec(m.phase || "L1");
        if (ph) pt[ph[0].toLowerCase()] = m.value;
      } else if (m.measurand === "Voltage") {
        const k = `${m.evse_id}|${x}`;
        const [s, n] = vsum.get(k) || [0, 0];
        vsum.set(k, [s + m.value, n + 1]);
        pt.v = (s + m.value) / (n + 1);
      } else if (m.measurand === "SoC") pt.soc = m.value;
    }
  }

  async function loadMeter(incremental) {
    const period = Number(P.period);
    const since = incremental && P.meterFrom ? P.meterFrom : new Date(Date.now() - period * 1000).toISOString();
    const id = P.id;
    const rows = await api(`/api/v1/stations/${enc(id)}/meter-values?from=${enc(since)}&limit=${METER_LIMIT}`);
    if (P.id !== id) return;
    if (!incremental) { P.meter = new Map(); P.meterCut = rows.length >= METER_LIMIT; }
    else {
      const from = secs(since);
      P.meter.forEach((pts) => [...pts.keys()].forEach((x) => { if (x >= Math.round(from)) pts.delete(x); }));
    }
    addMeterRows(rows);
    if (rows.length) P.meterFrom = rows[rows.length - 1].timestamp;
    else if (!incremental) P.meterFrom = since;
    const cutoff = Date.now() / 1000 - period;
    P.meter.forEach((pts) => [...pts.keys()].forEach((x) => { if (x < cutoff) pts.delete(x); }));
    renderMeter();
  }
  const meterLive = debounce(() => loadMeter(true).catch(() => {}), 1000);

  const SERIES = [
    ["Power", "p", "kW", "--c-ev-in", 2], ["Current L1", "l1", "A", "--c-net", 1],
    ["Current L2", "l2", "A", "--c-pv", 1], ["Current L3", "l3", "A", "--c-load", 1],
    ["Voltage", "v", "V", "--c-limit", 1], ["SoC", "soc", "%", "--c-price", 1.5],
  ];

  function chartData(pts) {
    const xs = [...pts.keys()].sort((a, b) => a - b);
    return [xs, ...SERIES.map(([, k]) => xs.map((x) => pts.get(x)[k] ?? null))];
  }

  function renderMeter() {
    const box = $("#st-meter");
    if (!box) return;
    const ids = [...new Set([...evses(), ...[...P.meter.keys()].filter((e) => e > 0)])].sort((a, b) => a - b);
    $("#st-meter-note").textContent = P.meterCut
      ? `Only the first ${METER_LIMIT} samples of the period are shown: choose a shorter period.` : "";
    if (ids.length) box.querySelector(":scope > p.muted")?.remove();
    for (const e of ids) {
      const pts = P.meter.get(e) || new Map();
      let wrap = box.querySelector(`[data-meter-evse="${e}"]`);
      if (!wrap) {
        wrap = document.createElement("div");
        wrap.className = "meter-evse";
        wrap.dataset.meterEvse = String(e);
        wrap.innerHTML = `<h3>EVSE ${e} <small class="muted meter-count"></small></h3>
          <div class="chart meter-chart" role="img" aria-label="Meter values of EVSE ${e}: power, current per phase, voltage, SoC"></div>`;
        box.append(wrap);
      }
      wrap.querySelector(".meter-count").textContent = pts.size
        ? `${pts.size} sample${pts.size === 1 ? "" : "s"}` : "no samples in this period";
      const data = chartData(pts);
      const u = P.charts.get(e);
      if (u) { u.setData(data); continue; }
      if (!pts.size) continue; // the chart comes with the first sample
      const el = wrap.querySelector(".meter-chart");
      const fmt = (unit) => (_u, v) => (v == null ? DASH : num(v, unit === "A" || unit === "kW" ? 1 : 0, unit));
      P.charts.set(e, EV.chart(el, {
        height: 240,
        legend: { live: true },
        scales: { x: { time: true } },
        series: [{ label: "Time", value: (_u, v) => (v == null ? DASH : new Date(v * 1000).toLocaleString()) },
          ...SERIES.map(([label, , unit, color, width]) => ({
            label, scale: unit, stroke: EV.cssVar(color), width, spanGaps: true, points: { show: false },
            value: fmt(unit),
          }))],
        axes: [EV.axis(), EV.axis({ scale: "kW", label: "kW", size: 50 }),
          EV.axis({ scale: "A", side: 1, label: "A", size: 50, grid: { show: false } })],
      }, data));
    }
    if (!ids.length) box.innerHTML = '<p class="muted">No EVSE reported yet.</p>';
  }

  function destroyCharts() {
    P.charts.forEach((u) => u.destroy());
    P.charts.clear();
  }

  /* ---------- configuration: 1.6 keys, 2.x variables and device model ---------- */

  async function loadConfig() {
    if (!canAct()) { P.cfgError = "Reading the configuration needs the operator role."; return; }
    if (!st().connected) { P.cfgError = "The station is offline: its configuration cannot be read."; return; }
    try {
      if (is16()) {
        const r = await cmd("get-configuration", {});
        P.cfg = ((r.response && r.response.configurationKey) || [])
          .map((k) => ({ key: k.key, value: k.value ?? "", readonly: !!k.readonly }))
          .sort((a, b) => a.key.localeCompare(b.key));
      } else {
        const r = await cmd("get-variables", {
          variables: DEFAULT_VARIABLES.map(([component, variable]) => ({ component, variable })),
        });
        P.cfg = ((r.response && r.response.getVariableResult) || [])
          .filter((v) => v.attributeStatus === "Accepted")
          .map((v) => variableRow(v.component, v.variable, v.attributeValue ?? "", null));
      }
      P.cfgError = "";
    } catch (e) {
      P.cfgError = `Could not read the configuration: ${e.detail || e.message}`;
    }
  }

  function variableRow(component, variable, value, mutability) {
    const c = component || {};
    const v = variable || {};
    return {
      component: c.name, evse: c.evse ? c.evse.id : null, connector: c.evse ? c.evse.connectorId ?? null : null,
      componentInstance: c.instance || null, variable: v.name, variableInstance: v.instance || null,
      value, mutability, readonly: mutability === "ReadOnly",
    };
  }

  /** The newest device model report the station sent (NotifyReport parts, kept in the event log). */
  async function loadReport() {
    if (is16()) return;
    const evs = await api(`/api/v1/events?station_id=${enc(P.id)}&kind=report&limit=200`);
    const parts = evs.filter((e) => e.type === "NotifyReport" && e.detail && Array.isArray(e.detail.reportData));
    if (!parts.length) { P.report = null; return; }
    const rid = parts[0].detail.requestId;
    const rows = [];
    parts.filter((e) => e.detail.requestId === rid).reverse().forEach((e) => e.detail.reportData.forEach((d) => {
      const attrs = d.variableAttribute || [];
      const actual = attrs.find((a) => !a.type || a.type === "Actual") || attrs[0] || {};
      rows.push(variableRow(d.component, d.variable, actual.value ?? "", actual.mutability || "ReadWrite"));
    }));
    rows.sort((a, b) => `${a.component}|${a.evse}|${a.variable}`.localeCompare(`${b.component}|${b.evse}|${b.variable}`));
    P.report = { at: parts[0].timestamp, rows };
  }

  /** A configuration row's name: the 1.6 key, or Component[instance]@evse.connector.Variable[instance]. */
  const rowId = (r) => r.key || `${r.component}${r.componentInstance ? `[${r.componentInstance}]` : ""}` +
    `${r.evse != null ? `@${r.evse}${r.connector != null ? `.${r.connector}` : ""}` : ""}` +
    `.${r.variable}${r.variableInstance ? `[${r.variableInstance}]` : ""}`;
  const varRef = (r) => {
    const ref = { component: r.component, variable: r.variable };
    if (r.evse != null) ref.evse = r.evse;
    if (r.connector != null) ref.connector = r.connector;
    if (r.componentInstance) ref.component_instance = r.componentInstance;
    if (r.variableInstance) ref.variable_instance = r.variableInstance;
    return ref;
  };

  /** The device model report's variables read again from the station (20 a request). */
  async function rereadReport() {
    const rows = P.report.rows.filter((r) => r.mutability !== "WriteOnly");
    try {
      for (let i = 0; i < rows.length; i += 20) {
        const part = rows.slice(i, i + 20);
        const r = await cmd("get-variables", { variables: part.map(varRef) });
        const byId = new Map(part.map((x) => [rowId(x), x]));
        ((r.response && r.response.getVariableResult) || []).forEach((v) => {
          const row = byId.get(rowId(variableRow(v.component, v.variable, "", null)));
          if (v.attributeStatus === "Accepted" && row) row.value = v.attributeValue ?? "";
        });
      }
    } catch (e) {
      P.cfgError = `Could not read the variables: ${e.detail || e.message}`;
    }
  }

  const cfgRows = () => (is16() ? P.cfg : P.report ? P.report.rows : P.cfg) || [];
  const varName = (r) => `${r.component}${r.componentInstance ? `[${r.componentInstance}]` : ""}` +
    `${r.evse != null ? ` EVSE ${r.evse}${r.connector != null ? `.${r.connector}` : ""}` : ""}`;

  function renderConfig() {
    const box = $("#st-config");
    if (!box) return;
    const rows = cfgRows();
    const f = P.cfgFilter.toLowerCase();
    const editable = (r) => !r.readonly && r.mutability !== "ReadOnly";
    const why = (r) => (!editable(r) ? "read-only" : offline());
    const source = is16() ? "" : P.report
      ? `Device model report of ${dateTime(P.report.at)} (${P.report.rows.length} variables).`
      : "A default set of variables (GetVariables); read the full device model for all of them.";
    const shown = rows.map((r, i) => [r, i]).filter(([r]) =>
      !f || `${r.key || ""} ${r.component || ""} ${r.variable || ""} ${r.value}`.toLowerCase().includes(f));
    const heads = is16() ? ["Key", "Value", "Access", "Answer", ""] : ["Component", "Variable", "Value", "Mutability", "Answer", ""];
    box.innerHTML = (P.cfgError ? `<p class="muted cfg-error">${esc(P.cfgError)}</p>` : "") +
      (source ? `<p class="muted small cfg-source">${esc(source)}</p>` : "") +
      A.table("config-table", "Configuration", heads, shown.map(([r, i]) => {
        const answer = P.answers.get("cfg:" + rowId(r)) || "";
        const input = `<input class="cfg-value" aria-label="${esc(r.key || `${r.component} ${r.variable}`)}" value="${esc(r.value)}"` +
          `${editable(r) && isAdmin() ? "" : " readonly"} spellcheck="false">`;
        const cells = is16()
          ? `<th scope="row" class="cfg-key">${esc(r.key)}</th><td>${input}</td><td>${r.readonly ? "read-only" : "read-write"}</td>`
          : `<th scope="row">${esc(varName(r))}</th><td class="cfg-key">${esc(r.variable)}${r.variableInstance ? `<div class="sub">${esc(r.variableInstance)}</div>` : ""}</td>` +
            `<td>${input}</td><td>${esc(r.mutability || DASH)}</td>`;
        return `<tr data-station="${esc(P.id)}" data-cfg="${i}" data-key="${esc(rowId(r))}">${cells}` +
          `<td class="cfg-answer">${esc(answer || DASH)}</td>` +
          `<td class="actions">${adminBtn("stSetConfig", "Save", "btn-save", why(r))}</td></tr>`;
      }), P.cfgError ? DASH : P.cfg || P.report ? "No matching entries." : "Not read yet.");
  }

  async function setConfig({ cfg }) {
    const row = $(`#config-table tr[data-cfg="${Number(cfg)}"]`);
    const r = row && cfgRows().find((x) => rowId(x) === row.dataset.key);
    if (!r || !row) return;
    const value = row.querySelector("input").value;
    const name = r.key || `${varName(r)} ${r.variable}`;
    const ok = await confirmDialog(`Change ${name} on ${P.id} from “${r.value}” to “${value}”?`, "", "Change");
    if (!ok) return;
    await run(`${name} = ${value}`, async () => {
      let answer;
      if (is16()) {
        answer = (await cmd("change-configuration", { key: r.key, value })).response;
      } else {
        const ref = varRef(r);
        const res = (await cmd("set-variables", { variables: [{ ...ref, value }] })).response;
        const one = (res.setVariableResult || [])[0] || {};
        answer = { status: one.attributeStatus, ...(one.attributeStatusInfo ? { info: one.attributeStatusInfo } : {}) };
        if (answer.status === "Accepted" || answer.status === "RebootRequired") {
          const got = await cmd("get-variables", { variables: [ref] });
          const v = ((got.response || {}).getVariableResult || [])[0];
          if (v && v.attributeValue != null) r.value = v.attributeValue;
        }
      }
      P.answers.set("cfg:" + rowId(r), answer.status || DASH);
      return { response: answer };
    }, async () => {
      if (is16()) await loadConfig();
      renderConfig();
    });
  }

  /* ---------- charging profiles and composite schedule ---------- */

  async function loadProfiles() {
    P.profiles = await api(`/api/v1/stations/${enc(P.id)}/charging-profiles`);
    renderProfiles();
  }

  function firstLimit(p) {
    const sched = [].concat(p.profile.chargingSchedule || [])[0] || {};
    const per = (sched.chargingSchedulePeriod || [])[0];
    return per ? `${num(per.limit, 1, sched.chargingRateUnit || "")}${(sched.chargingSchedulePeriod || []).length > 1 ? " …" : ""}` : DASH;
  }

  function renderProfiles() {
    const box = $("#st-profiles");
    if (!box) return;
    box.innerHTML = A.table("profiles-table", "Charging profiles set by evflex",
      ["Profile", "EVSE", "Purpose", "Stack level", "Limit", "Source", "Status", ""],
      P.profiles.map((p) => `<tr data-station="${esc(P.id)}" data-profile="${p.profile_id}" data-evse="${p.evse_id}">
        <th scope="row">${p.profile_id}</th><td>${p.evse_id}</td><td>${esc(p.purpose)}</td><td>${p.stack_level}</td>
        <td class="nowrap">${esc(firstLimit(p))}</td><td>${esc(p.source)}</td>
        <td title="${esc(p.error || "")}">${esc(p.status)}${p.error ? `<div class="sub">${esc(p.error)}</div>` : ""}</td>
        <td class="actions">${opBtn("stClearProfile", "Clear", "btn-clear btn-danger")}</td></tr>`),
      "No charging profiles set by evflex.");
  }

  async function loadComposite() {
    const evse = $("#comp-evse").value;
    const duration = $("#comp-duration").value;
    const out = $("#st-composite");
    out.setAttribute("aria-busy", "true");
    try {
      P.comp = await api(`/api/v1/stations/${enc(P.id)}/composite-schedule?evse=${enc(evse)}&duration=${enc(duration)}`);
      renderComposite();
    } catch (e) {
      out.innerHTML = `<p class="alert alert-error">Could not get the composite schedule: ${esc(e.detail || e.message)}</p>`;
    } finally {
      out.removeAttribute("aria-busy");
    }
  }

  function renderComposite() {
    const c = P.comp;
    const periods = (s) => (s ? s.chargingSchedulePeriod || [] : []);
    const starts = [...new Set([...periods(c.csms), ...periods(c.station)].map((p) => p.startPeriod))].sort((a, b) => a - b);
    const at = (s, t) => periods(s).filter((p) => p.startPeriod <= t).pop();
    const unit = (c.csms && c.csms.chargingRateUnit) || "A";
    const start = c.csms && c.csms.scheduleStart ? new Date(c.csms.scheduleStart) : new Date();
    const lim = (p) => (p ? num(p.limit, 1, unit) : DASH);
    const verdict = c.agree == null ? (c.station_answer ? `station answered ${c.station_answer.status}` : "station not asked (offline)")
      : c.agree ? "the station's schedule matches evflex's" : "the station's schedule differs from evflex's";
    $("#st-composite").innerHTML = `<p class="muted small comp-verdict">${esc(verdict)}</p>` +
      A.table("composite-table", "Composite schedule", ["From", "evflex", "Station"],
        starts.map((t) => `<tr><th scope="row" class="nowrap">${esc(dateTime(new Date(start.getTime() + t * 1000).toISOString()))}</th>
          <td class="num">${esc(lim(at(c.csms, t)))}</td><td class="num">${esc(c.station ? lim(at(c.station, t)) : DASH)}</td></tr>`),
        "No limit in the window: the station's own maximum applies.");
  }

  /* ---------- commands: reset, trigger, reservations, local list ---------- */

  function renderActions() {
    const box = $("#st-actions");
    if (!box) return;
    const triggers = TRIGGERS[is16() ? "1.6" : "2.x"];
    box.innerHTML = `
      <div class="btns">${opBtn("stReset", "Reset…", "btn-reset")}</div>
      <form id="trigger-form" class="inline-form">
        <div class="row">
          ${field("trigger-msg", "Trigger message", `<select id="trigger-msg" name="message">${triggers.map((t) => `<option>${t}</option>`).join("")}</select>`)}
          ${field("trigger-evse", "EVSE", `<select id="trigger-evse" name="evse">${evseOptions("All / station")}</select>`)}
          <button class="btn btn-small" type="submit" id="trigger-send"${canAct() && st().connected ? "" : ` disabled title="${esc(canAct() ? offline() : "needs operator role")}"`}>Trigger</button>
        </div>
      </form>`;
    renderReservations();
    renderLocalList();
  }

  function renderReservations() {
    const box = $("#st-reservations");
    if (!box) return;
    box.innerHTML = `<p class="muted small">evflex has no list of a station's reservations: these are the ones made from this page.</p>` +
      A.table("reservations-table", "Reservations made here", ["Reservation", "EVSE", "ID token", "Expires", "Answer", ""],
        P.reservations.map((r) => `<tr data-station="${esc(P.id)}" data-reservation="${r.id}">
          <th scope="row">${r.id}</th><td>${esc(r.evse || "any")}</td><td>${esc(r.token)}</td>
          <td class="nowrap">${esc(dateTime(r.expiry))}</td><td class="res-answer">${esc(r.answer)}</td>
          <td class="actions">${r.cancelled ? "cancelled" : opBtn("stCancelReservation", "Cancel", "btn-cancel-res")}</td></tr>`),
        "No reservation made from this page.") +
      `<div class="btns">${opBtn("stReserve", "Reserve…", "btn-reserve")}</div>`;
  }

  function renderLocalList() {
    const box = $("#st-local-list");
    if (!box) return;
    box.innerHTML = `<p>Version on the station: <strong id="local-version">${esc(P.localVersion ?? DASH)}</strong></p>
      <div class="btns">${opBtn("stLocalVersion", "Get version", "btn-local-version")}${adminBtn("stSendList", "Send list…", "btn-send-list", offline())}</div>`;
  }

  const PAGE = {
    stReset: () => A.ACTIONS.reset({ station: P.id }), // the fleet's reset dialog
    async stReserve() {
      const expiry = new Date(Date.now() + 30 * 60000);
      const f = await confirmDialog(`Reserve a connector of ${P.id}?`, `
        ${field("res-token", "ID token", '<input id="res-token" name="id_token" required maxlength="36" autocomplete="off" spellcheck="false">')}
        ${field("res-expiry", "Expires", `<input id="res-expiry" name="expiry" type="datetime-local" required value="${esc(EV.toLocalInput(expiry.toISOString()))}">`)}
        ${field("res-evse", "EVSE", `<select id="res-evse" name="evse">${evseOptions("Any")}</select>`)}
        ${field("res-id", "Reservation id", `<input id="res-id" name="id" type="number" min="0" required value="${Math.floor(Date.now() / 1000) % 1000000}">`)}`,
      "Reserve");
      if (!f) return;
      const r = { id: Number(f.get("id")), token: String(f.get("id_token")).trim(), evse: f.get("evse"),
        expiry: new Date(String(f.get("expiry"))).toISOString(), answer: DASH };
      const body = { id_token: r.token, expiry: r.expiry, reservation_id: r.id };
      if (r.evse) body.evse = Number(r.evse);
      await run(`Reserve ${P.id}`, async () => {
        const res = await cmd("reserve-now", body);
        r.answer = statusOf(res);
        P.reservations.unshift(r);
        return res;
      }, renderReservations);
    },
    async stLocalVersion() {
      await run(`Local list version of ${P.id}`, async () => {
        const r = await cmd("get-local-list-version", {});
        P.localVersion = r.response.listVersion ?? r.response.versionNumber ?? DASH;
        return { response: { status: `version ${P.localVersion}` } };
      }, renderLocalList);
    },
    async stSendList() {
      const next = Number.isFinite(Number(P.localVersion)) && Number(P.localVersion) > 0 ? Number(P.localVersion) + 1 : 1;
      const f = await confirmDialog(`Send a local authorization list to ${P.id}?`, `
        ${field("list-tokens", "ID tokens, one per line (differential: “-TOKEN” removes one)", '<textarea id="list-tokens" name="tokens" rows="5" spellcheck="false"></textarea>')}
        <fieldset class="choices"><legend>Update</legend>
          <label><input type="radio" name="update" value="Full" checked> Full — replaces the list</label>
          <label><input type="radio" name="update" value="Differential"> Differential — adds and removes</label>
        </fieldset>
        ${field("list-version", "List version", `<input id="list-version" name="version" type="number" min="1" required value="${next}">`)}`,
      "Send list");
      if (!f) return;
      const update = f.get("update");
      const entries = String(f.get("tokens")).split(/\s+/).filter(Boolean).map((t) => (t.startsWith("-") && update === "Differential"
        ? { id_token: t.slice(1), status: null } : { id_token: t, status: "Accepted" }));
      const version = Number(f.get("version"));
      await run(`Send local list v${version} to ${P.id}`, async () => {
        const r = await cmd("send-local-list", { version, update, entries });
        if (statusOf(r) === "Accepted") P.localVersion = version;
        return r;
      }, renderLocalList);
    },
    async stReadConfig() {
      P.cfgError = "";
      $("#st-config").setAttribute("aria-busy", "true");
      await (P.report ? rereadReport() : loadConfig());
      $("#st-config").removeAttribute("aria-busy");
      renderConfig();
    },
    async stBaseReport() {
      const ok = await confirmDialog(`Ask ${P.id} for its full device model (GetBaseReport)? It is shown when the report arrives.`, "", "Ask");
      if (!ok) return;
      await run(`Device model report of ${P.id}`, () => cmd("get-base-report", { report: "FullInventory" }));
    },
    async stUpdateFirmware() {
      const f = await confirmDialog(`Update the firmware of ${P.id}?`, `
        ${field("fw-location", "Firmware URL", '<input id="fw-location" name="location" type="url" required spellcheck="false" placeholder="https://…">')}
        ${field("fw-at", "Retrieve at (empty: now)", '<input id="fw-at" name="retrieve_at" type="datetime-local">')}
        ${field("fw-retries", "Retries", '<input id="fw-retries" name="retries" type="number" min="0">')}
        ${field("fw-interval", "Retry interval (s)", '<input id="fw-interval" name="retry_interval_s" type="number" min="0">')}`,
      "Update firmware");
      if (!f) return;
      const body = { location: String(f.get("location")).trim() };
      if (f.get("retrieve_at")) body.retrieve_at = new Date(String(f.get("retrieve_at"))).toISOString();
      if (f.get("retries") !== "") body.retries = Number(f.get("retries"));
      if (f.get("retry_interval_s") !== "") body.retry_interval_s = Number(f.get("retry_interval_s"));
      await run(`Firmware update of ${P.id}`, () => cmd("update-firmware", body), view.refresh);
    },
    async stUpload() {
      const kinds = is16() ? "" : field("log-type", "Log", `<select id="log-type" name="log_type">
        <option value="DiagnosticsLog">Diagnostics log</option><option value="SecurityLog">Security log</option></select>`);
      const what = is16() ? "diagnostics" : "a log";
      const f = await confirmDialog(`Ask ${P.id} to upload ${what}?`, `${kinds}
        ${field("up-location", "Upload URL (empty: evflex's own)", '<input id="up-location" name="location" type="url" spellcheck="false">')}`,
      "Request upload");
      if (!f) return;
      const body = {};
      if (String(f.get("location") || "").trim()) body.location = String(f.get("location")).trim();
      if (!is16()) body.log_type = f.get("log_type");
      await run(`Upload of ${what} from ${P.id}`, () => cmd(is16() ? "get-diagnostics" : "get-log", body), view.refresh);
    },
  };

  A.actions({
    stOperative: (d) => setAvailability(d, true),
    stInoperative: (d) => setAvailability(d, false),
    async stUnlock({ evse, connector }) {
      const ok = await confirmDialog(`Unlock connector ${connector} of EVSE ${evse} on ${P.id}?`, "", "Unlock");
      if (!ok) return;
      await run(`Unlock EVSE ${evse}`, () => cmd("unlock-connector", { evse: Number(evse), connector: Number(connector) }), view.refresh);
    },
    stSetConfig: setConfig,
    async stClearProfile({ profile, evse }) {
      const ok = await confirmDialog(`Clear charging profile ${profile} (EVSE ${evse}) on ${P.id}?`, "", "Clear profile");
      if (!ok) return;
      await run(`Clear profile ${profile}`, async () => {
        const r = await api(`/api/v1/stations/${enc(P.id)}/charging-profiles?id=${enc(profile)}`, { method: "DELETE" });
        return { response: r.station || {} };
      }, () => loadProfiles().catch(() => {}));
    },
    async stCancelReservation({ reservation }) {
      const r = P.reservations.find((x) => String(x.id) === String(reservation));
      const ok = await confirmDialog(`Cancel reservation ${reservation} on ${P.id}?`, "", "Cancel reservation");
      if (!ok || !r) return;
      await run(`Cancel reservation ${reservation}`, async () => {
        const res = await cmd("cancel-reservation", { reservation_id: Number(reservation) });
        r.answer = `cancel: ${statusOf(res)}`;
        r.cancelled = statusOf(res) === "Accepted";
        return res;
      }, renderReservations);
    },
  });

  /* ---------- firmware and uploads ---------- */

  function renderFirmware() {
    const box = $("#st-firmware");
    if (!box) return;
    const s = st();
    const fw = s.firmware;
    const up = s.upload;
    const upCmd = is16() ? "Get diagnostics…" : "Get log…";
    box.innerHTML = `<div class="grid-2">
      <div><h3>Firmware</h3><dl class="kv" id="fw-status">${figures(fw ? [
        ["Status", fw.status || DASH, "data-fw", "status"], ["At", dateTime(fw.at)],
        ["Request", fw.request_id == null ? DASH : String(fw.request_id)], ["From", fw.location || DASH],
      ] : [["Status", "no update requested", "data-fw", "status"]])}</dl>
      <div class="btns">${adminBtn("stUpdateFirmware", "Update firmware…", "btn-firmware", offline())}</div></div>
      <div><h3>${is16() ? "Diagnostics" : "Logs"}</h3><dl class="kv" id="upload-status">${figures(up ? [
        ["Status", up.status || DASH, "data-upload", "status"], ["Kind", up.kind || DASH], ["At", dateTime(up.at)],
        ["File", up.file || DASH, "data-upload", "file"], ["To", up.location || DASH],
      ] : [["Status", "no upload requested", "data-upload", "status"]])}</dl>
      <div class="btns">${adminBtn("stUpload", upCmd, "btn-upload", offline())}</div></div></div>
      <div id="st-uploads"></div>`;
    renderUploads();
  }

  async function loadUploads() {
    try {
      P.uploads = await api(`/api/v1/stations/${enc(P.id)}/uploads`);
    } catch (e) {
      P.uploads = e.status === 403 ? "Only admins see the uploaded files." : null;
    }
    renderUploads();
  }

  function renderUploads() {
    const box = $("#st-uploads");
    if (!box || P.uploads == null) return;
    if (typeof P.uploads === "string") { box.innerHTML = `<p class="muted small">${esc(P.uploads)}</p>`; return; }
    const href = (u) => `/api/v1/stations/${enc(P.id)}/uploads/${enc(u.name)}`;
    box.innerHTML = A.table("uploads-table", "Files the station uploaded", ["File", "Size", "Received"],
      P.uploads.map((u) => `<tr><th scope="row"><a href="${esc(href(u))}" download>${esc(u.name)}</a></th>
        <td class="num">${esc(num(u.size / 1024, 1, "KiB"))}</td><td class="nowrap">${esc(dateTime(u.modified_at))}</td></tr>`),
      "No files uploaded yet.");
  }

  /* ---------- the view ---------- */

  const view = A.register("station", {
    re: /^#\/stations\/([^/]+)$/, nav: "#/fleet", title: "Station",
    skeleton: () => {
      destroyCharts();
      return `
      <p class="crumbs"><a href="#/fleet">Fleet</a> / <span id="st-crumb"></span></p>
      <div class="section-head"><h1 id="st-title">Station <span id="st-name"></span></h1><span id="st-conn" class="badge"></span></div>
      <section class="card" aria-labelledby="st-id-h"><h2 id="st-id-h">Identity</h2><dl id="st-identity" class="figures"></dl></section>
      <section class="card" aria-labelledby="st-conn-h"><h2 id="st-conn-h">Connectors</h2><div id="st-connectors"></div></section>
      <section class="card" aria-labelledby="st-meter-h">
        <div class="section-head"><h2 id="st-meter-h">Meter values</h2>
          <label class="inline">Period <select id="st-period">${PERIODS.map(([v, l]) => `<option value="${v}">${l}</option>`).join("")}</select></label></div>
        <p id="st-meter-note" class="muted small"></p><div id="st-meter" aria-live="off"></div>
        <p class="muted small">Power in kW (left axis), current per phase in A (right axis); voltage and SoC in the legend.</p>
      </section>
      <section class="card" aria-labelledby="st-cfg-h">
        <div class="section-head"><h2 id="st-cfg-h">Configuration</h2>
          <div class="btns"><label class="inline">Filter <input id="cfg-filter" type="search" autocomplete="off"></label>
          <button type="button" class="btn btn-small" data-action="stReadConfig" id="cfg-read">Read again</button>
          <span id="cfg-report-btn"></span></div></div>
        <div id="st-config"></div>
        <p class="muted small">Changes need the admin role; the station's answer is shown per row.</p>
      </section>
      <section class="card" aria-labelledby="st-prof-h">
        <h2 id="st-prof-h">Charging profiles</h2><div id="st-profiles"></div>
        <h3>Composite schedule</h3>
        <form id="comp-form" class="inline-form"><div class="row">
          <label class="inline">EVSE <select id="comp-evse"></select></label>
          <label class="inline">Duration <select id="comp-duration"><option value="3600">1 h</option><option value="21600">6 h</option><option value="86400">24 h</option></select></label>
          <button class="btn btn-small" type="submit" id="comp-get">Get</button></div></form>
        <div id="st-composite"></div>
      </section>
      <div class="grid-2">
        <section class="card" aria-labelledby="st-act-h"><h2 id="st-act-h">Commands</h2><div id="st-actions"></div></section>
        <section class="card" aria-labelledby="st-list-h"><h2 id="st-list-h">Local authorization list</h2><div id="st-local-list"></div></section>
      </div>
      <section class="card" aria-labelledby="st-res-h"><h2 id="st-res-h">Reservations</h2><div id="st-reservations"></div></section>
      <section class="card" aria-labelledby="st-fw-h"><h2 id="st-fw-h">Firmware and logs</h2><div id="st-firmware"></div></section>`;
    },
    mount() {
      $("#st-period").value = P.period;
      $("#st-period").addEventListener("change", (e) => {
        P.period = e.target.value;
        destroyCharts();
        $("#st-meter").textContent = "";
        loadMeter(false).catch((err) => toast(`Meter values: ${err.detail || err.message}`, "error"));
      });
      $("#cfg-filter").addEventListener("input", (e) => { P.cfgFilter = e.target.value; renderConfig(); });
      $("#comp-form").addEventListener("submit", (e) => { e.preventDefault(); loadComposite(); });
    },
    async load(id) {
      const first = P.id !== id;
      const s = await api(`/api/v1/stations/${enc(id)}`);
      if (first) { destroyCharts(); P = fresh(id, P.period); }
      const was = P.st;
      P.st = s;
      if (first || !$("#config-table") || (was && was.connected !== s.connected)) initSections();
    },
    render() {
      renderIdentity();
      clearPending();
      renderConnectors();
      renderFirmware();
    },
    onEvent(topic, msg) {
      if (!msg || msg.station_id !== P.id) return;
      if (/^(station|connector)\./.test(topic)) view.refresh();
      if (/^(meter\.values|transaction\.)/.test(topic)) meterLive();
      if (topic === "station.report") loadReport().then(renderConfig).catch(() => {});
      if (topic === "charging_profiles.report" || topic === "transaction.ended") loadProfiles().catch(() => {});
      if (topic === "station.upload") loadUploads();
    },
  });

  /** The parts loaded once per visit (or when the station comes back): they keep their
   * own state (edited values, chart zoom) across the live refreshes of the rest. */
  function initSections() {
    $("#st-name").textContent = P.id;
    $("#cfg-read").disabled = !canAct();
    if (!canAct()) $("#cfg-read").title = "needs operator role";
    $("#cfg-report-btn").innerHTML = is16() ? "" : adminBtn("stBaseReport", "Read full device model", "btn-base-report", offline());
    $("#comp-evse").innerHTML = `<option value="0">0 (station)</option>${evseOptions("")}`;
    renderActions();
    renderConfig();
    const fail = (what) => (e) => toast(`${what}: ${e.detail || e.message}`, "error");
    loadMeter(false).catch(fail("Meter values"));
    loadProfiles().catch(fail("Charging profiles"));
    loadUploads();
    Promise.all([loadConfig(), loadReport().catch(() => {})]).then(renderConfig);
  }

  /** A scheduled availability change is done once the connector reports the new state. */
  function clearPending() {
    for (const [key, want] of P.pending) {
      const [evse, connector] = key.split(".").map(Number);
      const cs = (st().connectors || []).filter((c) => c.evse_id > 0 && (!evse || (c.evse_id === evse && c.connector_id === (connector || c.connector_id))));
      const off = cs.length > 0 && cs.every((c) => OFF.has(c.status));
      if (cs.length && off === (want === "inoperative")) P.pending.delete(key);
    }
  }

  async function triggerMessage() {
    const message = $("#trigger-msg").value;
    const evse = $("#trigger-evse").value;
    const ok = await confirmDialog(`Ask ${P.id} to send ${message}${evse ? ` for EVSE ${evse}` : ""}?`, "", "Trigger");
    if (!ok) return;
    const body = { message };
    if (evse) body.evse = Number(evse);
    await run(`Trigger ${message}`, () => cmd("trigger-message", body));
  }

  // the page's buttons outside table rows, and the trigger form (listeners set once)
  document.addEventListener("click", (e) => {
    const b = A.S.view === view && e.target.closest("#view button[data-action]");
    if (b && !b.disabled && !b.closest("tr") && PAGE[b.dataset.action]) PAGE[b.dataset.action](b.dataset);
  });
  document.addEventListener("submit", (e) => {
    if (A.S.view !== view || e.target.id !== "trigger-form") return;
    e.preventDefault();
    triggerMessage();
  });

  /** "Last heard" counts on between refreshes. */
  setInterval(() => {
    const dd = A.S.view === view && $('#st-identity [data-id="age"]');
    if (!dd || !P.st || P.st.heartbeat_age_s == null) return;
    const hint = dd.querySelector("small");
    dd.textContent = ago(P.st.heartbeat_age_s + (Date.now() - P.ageAt) / 1000) + " ";
    if (hint) dd.append(hint);
  }, 1000);

  window.addEventListener("hashchange", () => { if (!view.re.test(location.hash)) destroyCharts(); });
})();
