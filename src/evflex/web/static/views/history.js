/* evflex operator app: the history view (charge records of ended sessions; registered with EV.app). */
(function () {
  "use strict";
  const { esc, num, kw, kwh, money, dateTime, isoWithOffset, ApiError, DASH } = EV;
  const A = EV.app;
  const { $, enc } = A;
  const PAGE = 50;

  const H = { filters: {}, offset: 0, rows: [], total: 0, sites: [], detail: null };

  /** The query string of the filters (and paging when given). */
  function query(extra = {}) {
    const p = new URLSearchParams();
    Object.entries({ ...H.filters, ...extra }).forEach(([k, v]) => {
      if (v !== "" && v != null) p.set(k, v);
    });
    const s = p.toString();
    return s ? "?" + s : "";
  }

  /** A list page with its X-Total-Count (EV.api gives the body only). */
  async function page() {
    const res = await fetch("/api/v1/charge-records" + query({ offset: H.offset, limit: PAGE }),
      { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
    const body = await res.json().catch(() => null);
    if (res.status === 401) location.assign("/login");
    if (!res.ok) {
      const d = body && body.detail;
      throw new ApiError(res.status, Array.isArray(d) ? d.map((e) => e.msg).join("; ") : d || `HTTP ${res.status}`);
    }
    return { rows: body, total: parseInt(res.headers.get("X-Total-Count") || "0", 10) };
  }

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
      <td><span class="need need-${cls}">${esc(need)}</span></td>
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

  A.register("history", {
    re: /^#\/history$/, nav: "#/history", title: "History",
    skeleton: () => `<div class="section-head"><h1>History</h1>
      <a id="history-csv" class="btn btn-small" href="/api/v1/charge-records.csv" download>Download CSV</a></div>
      <form id="history-filters" class="filters" aria-label="Filter the charge records">
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
      <div class="pager"><button type="button" class="btn btn-small" id="history-prev">Newer</button>
        <button type="button" class="btn btn-small" id="history-next">Older</button></div>
      <div id="history-detail-box"></div>`,
    mount() {
      const f = $("#history-filters");
      const v = A.views.history;
      f.station.value = H.filters.station_id || "";
      f.card.value = H.filters.id_token || "";
      f.addEventListener("submit", (e) => { e.preventDefault(); readFilters(); v.refresh(); });
      f.addEventListener("reset", () => setTimeout(() => { readFilters(); v.refresh(); }));
      $("#history-prev").addEventListener("click", () => { H.offset = Math.max(0, H.offset - PAGE); v.refresh(); });
      $("#history-next").addEventListener("click", () => { H.offset += PAGE; v.refresh(); });
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
