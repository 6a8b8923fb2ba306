/* evflex operator app: the history view (charge records of ended sessions; registered with EV.app). */
(function () {
  "use strict";
  const { esc, num, kw, kwh, money, dateTime, isoWithOffset, apiPage, queryString, DASH } = EV;
  const A = EV.app;
  const { $, enc } = A;
  const PAGE = 50;

  const H = { filters: {}, offset: 0, rows: [], total: 0, sites: [], detail: null };

  /** The query string of the filters (and paging when given). */
  const query = (extra = {}) => queryString({ ...H.filters, ...extra });

  /** A list page with its X-Total-Count. */
  const page = () => apiPage("/api/v1/charge-records" + query({ offset: H.offset, limit: PAGE }));

  function duration(s) {
    if (s == null) return DASH;
    const m = Math.round(s / 60);
    return m < 60 ? `${m} min` : `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
  }

  const cost = (r) => (r.total_cost == null ? DASH : `${money(r.total_cost)} ${r.currency}`);
  const NEED = { yes: ["met", "ok"], no: ["not met", "error"], unknown: ["unknown", "muted"] };

  function row(r) {
    const [need, cls] = NEED[r.need_met] || [r.need_met, ""];
    const where = `${r.station_id} / ${r.evse_id ?? DASH}`;
    const noCost = r.total_cost == null && r.cost_error ? ` title="${esc(r.cost_error)}"` : "";
    return `<tr data-record="${esc(r.id)}">
      <td>${esc(dateTime(r.started_at))}</td>
      <td>${esc(where)}</td>
      <td>${esc(r.id_token ?? DASH)}</td>
      <td class="num">${esc(duration(r.duration_s))}</td>
      <td class="num">${esc(kwh(r.energy_imported_kwh))}</td>
      <td class="num">${esc(kwh(r.energy_exported_kwh))}</td>
      <td class="num">${esc(kw(r.peak_import_kw))}</td>
      <td><span class="rec-need rec-need-${cls}">${esc(need)}</span></td>
      <td class="num"${noCost}>${esc(cost(r))}</td>
      <td><button type="button" class="btn btn-small" data-action="recordDetail"
        aria-expanded="${H.detail && H.detail.id === r.id}">Details</button></td>
    </tr>`;
  }

  function detail(d) {
    if (!d) return "";
    const t = d.tariff;
    const periods = (d.cost_detail || []).map((p) =>
      `<tr><td>${esc(p.period)}</td><td class="num">${esc(kwh(p.kwh))}</td>` +
      `<td class="num">${esc(num(p.price_per_kwh, 3))}</td><td class="num">${esc(money(p.cost))}</td></tr>`).join("");
    const tariff = !t ? `<p class="muted">Not priced: ${esc(d.cost_error || "no tariff")}</p>`
      : `<p>Tariff: ${t.source === "tariff" ? `version ${esc(t.version)} from ${esc(dateTime(t.valid_from))}` : "the site's import/export prices"}
         (${esc(t.timezone)}); energy ${esc(num(t.energy_price_per_kwh, 3))}/kWh, feed-in ${esc(num(t.feed_in_reward_per_kwh, 3))}/kWh,
         idle ${esc(num(t.idle_fee_per_minute, 3))}/min after ${esc(num(t.idle_grace_minutes, 0))} min</p>`;
    const c = d.currency;
    return `<section id="history-detail" class="card" aria-label="Charge record ${esc(d.id)}">
      <div class="section-head"><h2>Session ${esc(d.transaction_id)} at ${esc(d.station_id)}</h2>
        <button type="button" class="btn btn-small" id="history-detail-close">Close</button></div>
      <p>${esc(dateTime(d.started_at))} ${esc(DASH)} ${esc(dateTime(d.stopped_at))} · stop: ${esc(d.stop_reason || DASH)} ·
        charging ${esc(duration(d.charging_s))}, V2X ${esc(duration(d.discharging_s))}, idle ${esc(duration(d.idle_s))} ·
        need ${esc(d.energy_need_kwh == null ? "none given" : kwh(d.energy_need_kwh))}
        ${d.departure_at ? `by ${esc(dateTime(d.departure_at))}` : ""}</p>
      ${tariff}
      ${periods ? `<div class="table-wrap"><table id="history-periods"><caption class="sr-only">Energy per price period</caption>
        <thead><tr><th scope="col">Period</th><th scope="col">Energy</th><th scope="col">Price/kWh</th><th scope="col">Cost (${esc(c)})</th></tr></thead>
        <tbody>${periods}</tbody></table></div>` : ""}
      <dl class="cost-breakdown">
        <dt>Energy</dt><dd>${esc(money(d.energy_cost))} ${esc(c)}</dd>
        <dt>Feed-in reward</dt><dd>${esc(money(d.feed_in_reward == null ? null : -d.feed_in_reward))} ${esc(c)}</dd>
        <dt>Idle fee</dt><dd>${esc(money(d.idle_fee))} ${esc(c)}</dd>
        <dt>Total</dt><dd id="history-detail-total">${esc(cost(d))}</dd>
      </dl>
    </section>`;
  }

  function localIso(value) {
    return value ? isoWithOffset(new Date(value)) : "";
  }

  function readFilters() {
    const f = $("#history-filters");
    H.filters = {
      station_id: f.station.value.trim(),
      site_id: f.site.value,
      id_token: A.canAct() ? f.card.value.trim() : "",
      from: localIso(f.from.value),
      to: localIso(f.to.value),
    };
    H.offset = 0;
    H.detail = null;
  }

  /* ---------- site tariffs ---------- */

  const windowText = (w) => `${w.start}-${w.end} ${w.price_per_kwh}${w.days ? " " + w.days.join(",") : ""}`;

  /** Windows from the textarea's lines; throws with the line that is not one. */
  function parseWindows(text) {
    return text.split("\n").map((l) => l.trim()).filter(Boolean).map((line, i) => {
      const m = line.match(/^(\d\d:\d\d)\s*-\s*(\d\d:\d\d)\s+([0-9.]+)(?:\s+([A-Za-z, ]+))?$/);
      if (!m) throw new Error(`line ${i + 1} ("${line}") is not HH:MM-HH:MM price [days]`);
      const w = { start: m[1], end: m[2], price_per_kwh: Number(m[3]) };
      if (m[4]) w.days = m[4].split(",").map((d) => d.trim()).filter(Boolean);
      return w;
    });
  }

  async function showTariff(siteId) {
    const box = $("#tariff-current");
    if (!box || !siteId) return;
    let t;
    try {
      t = await A.api(`/api/v1/sites/${enc(siteId)}/tariff`);
    } catch (e) {
      box.textContent = `Could not load the tariff: ${e.detail || e.message}`;
      return;
    }
    const c = t.current;
    const f = $("#tariff-form");
    if (c) {
      box.innerHTML = `<p>In force: version ${esc(c.version)} from ${esc(dateTime(c.valid_from))}:
        ${esc(num(c.energy_price_per_kwh, 3))} ${esc(t.currency)}/kWh,
        ${c.time_of_use.length} time-of-use window${c.time_of_use.length === 1 ? "" : "s"},
        feed-in ${esc(num(c.feed_in_reward_per_kwh, 3))}, idle ${esc(num(c.idle_fee_per_minute, 3))}/min
        after ${esc(num(c.idle_grace_minutes, 0))} min (${esc(c.timezone)}); ${t.history.length} version(s) in all.</p>`;
      f.energy.value = c.energy_price_per_kwh;
      f.feedin.value = c.feed_in_reward_per_kwh;
      f.idle.value = c.idle_fee_per_minute;
      f.grace.value = c.idle_grace_minutes;
      f.tz.value = c.timezone;
      f.windows.value = c.time_of_use.map(windowText).join("\n");
    } else {
      const fb = t.fallback;
      box.innerHTML = `<p class="muted">No tariff version: ${fb
        ? `the site's own prices (${esc(num(fb.energy_price_per_kwh, 3))} ${esc(t.currency)}/kWh, feed-in ${esc(num(fb.feed_in_reward_per_kwh, 3))})`
        : "sessions here are not priced"}.</p>`;
    }
  }

  async function saveTariff() {
    const f = $("#tariff-form");
    const site = $("#tariff-site").value;
    let body;
    try {
      body = {
        energy_price_per_kwh: Number(f.energy.value),
        feed_in_reward_per_kwh: Number(f.feedin.value || 0),
        idle_fee_per_minute: Number(f.idle.value || 0),
        idle_grace_minutes: Number(f.grace.value || 0),
        timezone: f.tz.value.trim(),
        time_of_use: parseWindows(f.windows.value),
      };
    } catch (e) {
      A.toast(`Tariff for ${site}: ${e.message}`, "error");
      return;
    }
    try {
      const v = await A.api(`/api/v1/sites/${enc(site)}/tariff`, { method: "PUT", body });
      A.toast(`Tariff for ${site}: version ${v.version} in force from ${dateTime(v.valid_from)}`);
    } catch (e) {
      A.toast(`Tariff for ${site} refused: ${e.detail || e.message}`, "error");
      return;
    }
    showTariff(site);
  }

  A.register("history", {
    re: /^#\/history$/, nav: "#/history", title: "History",
    skeleton: () => `<div class="section-head"><h1>History</h1>
      <a id="history-csv" class="btn btn-small" href="/api/v1/charge-records.csv" download>Download CSV</a></div>
      <form id="history-filters" aria-label="Filter the charge records">
        <label>Station <input name="station" autocomplete="off" maxlength="48"></label>
        <label>Site <select name="site"><option value="">All</option></select></label>
        <label>Card <input name="card" autocomplete="off" maxlength="255"
          ${A.canAct() ? "" : 'disabled title="needs operator role"'}></label>
        <label>From <input name="from" type="datetime-local"></label>
        <label>To <input name="to" type="datetime-local"></label>
        <button type="submit" class="btn btn-small btn-primary">Apply</button>
        <button type="reset" class="btn btn-small">Clear</button>
      </form>
      <p id="history-count" class="muted" role="status"></p>
      <div id="history-body"></div>
      <div class="history-pager"><button type="button" class="btn btn-small" id="history-prev">Newer</button>
        <button type="button" class="btn btn-small" id="history-next">Older</button></div>
      <div id="history-detail-box"></div>
      <details id="tariff-card" class="card">
        <summary>Site tariffs</summary>
        <label class="inline">Site <select id="tariff-site"></select></label>
        <div id="tariff-current" role="status"></div>
        <form id="tariff-form" class="tariff-form">
          <fieldset ${A.isAdmin() ? "" : 'disabled title="admins only"'}>
            <legend>New version ${A.isAdmin() ? "" : "(admins only)"}</legend>
            <label>Energy price /kWh <input name="energy" type="number" step="any" min="0" required></label>
            <label>Feed-in reward /kWh <input name="feedin" type="number" step="any" value="0"></label>
            <label>Idle fee /min <input name="idle" type="number" step="any" min="0" value="0"></label>
            <label>Grace (min) <input name="grace" type="number" step="any" min="0" value="0"></label>
            <label>Time zone <input name="tz" value="UTC" required></label>
            <label class="wide">Time-of-use windows, one a line: <code>HH:MM-HH:MM price [Mon,Tue,…]</code>
              <textarea name="windows" rows="3" spellcheck="false"></textarea></label>
            <button type="submit" class="btn btn-small btn-primary">Save tariff</button>
          </fieldset>
        </form>
      </details>`,
    mount() {
      const f = $("#history-filters");
      const v = A.views.history;
      f.station.value = H.filters.station_id || "";
      f.card.value = H.filters.id_token || "";
      f.addEventListener("submit", (e) => { e.preventDefault(); readFilters(); v.refresh(); });
      f.addEventListener("reset", () => setTimeout(() => { readFilters(); v.refresh(); }));
      $("#history-prev").addEventListener("click", () => { H.offset = Math.max(0, H.offset - PAGE); v.refresh(); });
      $("#history-next").addEventListener("click", () => { H.offset += PAGE; v.refresh(); });
      $("#tariff-site").addEventListener("change", (e) => showTariff(e.target.value));
      $("#tariff-form").addEventListener("submit", (e) => { e.preventDefault(); saveTariff(); });
      $("#history-detail-box").addEventListener("click", (e) => {
        if (e.target.id === "history-detail-close") { H.detail = null; v.render(); }
      });
    },
    async load() {
      const [p, sites] = await Promise.all([page(), A.api("/api/v1/sites")]);
      H.rows = p.rows;
      H.total = p.total;
      H.sites = sites;
    },
    render() {
      const sel = $("#history-filters").site;
      const chosen = H.filters.site_id || "";
      sel.innerHTML = `<option value="">All</option>` + H.sites.map((s) =>
        `<option value="${esc(s.id)}">${esc(s.name || s.id)}</option>`).join("");
      sel.value = chosen;
      const ts = $("#tariff-site");
      if (!ts.options.length && H.sites.length) {
        ts.innerHTML = H.sites.map((x) => `<option value="${esc(x.id)}">${esc(x.name || x.id)}</option>`).join("");
        showTariff(ts.value);
      }
      $("#history-csv").setAttribute("href", "/api/v1/charge-records.csv" + query());
      const first = H.total ? H.offset + 1 : 0;
      $("#history-count").textContent =
        `${first}${DASH}${H.offset + H.rows.length} of ${H.total} charge record${H.total === 1 ? "" : "s"}`;
      $("#history-body").innerHTML = A.table("history-table", "Charge records, newest first",
        ["Start", "Station / EVSE", "Card", "Duration", "kWh in", "kWh out", "Peak", "Need", "Cost", ""],
        H.rows.map(row), "No charge records match.");
      $("#history-prev").disabled = H.offset === 0;
      $("#history-next").disabled = H.offset + H.rows.length >= H.total;
      $("#history-detail-box").innerHTML = detail(H.detail);
    },
  });

  A.actions({
    async recordDetail({ record }) {
      if (H.detail && String(H.detail.id) === record) { H.detail = null; A.views.history.render(); return; }
      try {
        H.detail = await A.api(`/api/v1/charge-records/${enc(record)}`);
      } catch (e) {
        A.toast(`Record ${record}: ${e.detail || e.message}`, "error");
        return;
      }
      A.views.history.render();
      const box = $("#history-detail");
      if (box) box.scrollIntoView({ block: "nearest" });
    },
  });

  // a session that ends shows up at once on the first page
  A.listen(["record.created"], () => {
    if (A.S.view === A.views.history && H.offset === 0) A.views.history.refresh();
  });
})();
