/* evflex operator app: the audit trail (#/audit, a tab of the Events page): who did what, when,
 * from where, and the outcome; filters, pages, CSV export, the hash chain's state, live rows.
 * Read-only for every role: the trail has nothing to edit. */
(function () {
  "use strict";
  const { esc, dateTime, isoWithOffset, queryString, DASH } = EV;
  const A = EV.app;
  const { $, table } = A;
  const PAGE = 50;
  const OUTCOME_BADGE = { ok: "badge-ok", refused: "badge-bad", failed: "badge-priority" };

  const T = { filters: {}, offset: 0, rows: [], total: 0, chain: null };

  const query = (extra = {}) => queryString({ ...T.filters, ...extra });

  /** One page of rows and the number of all that match. */
  async function page() {
    try {
      return await EV.apiPage("/api/v1/audit" + query({ offset: T.offset, limit: PAGE }));
    } catch (e) {
      if (e.status === 401) location.assign("/login");
      throw e;
    }
  }

  async function checkChain() {
    try {
      T.chain = { ...(await A.api("/api/v1/audit/verify")), at: new Date().toISOString() };
    } catch (e) {
      T.chain = { error: e.detail || e.message };
    }
    renderChain();
  }

  function renderChain() {
    const box = $("#audit-chain");
    if (!box) return;
    const c = T.chain;
    box.className = "audit-chain " + (!c || c.error ? "" : c.ok ? "chain-ok" : "chain-broken");
    box.textContent = !c ? "Checking the hash chain…"
      : c.error ? `Hash chain not checked: ${c.error}`
      : c.ok ? `Hash chain intact: ${c.rows} rows checked ${dateTime(c.at)}`
      : `Hash chain broken at row ${c.first_bad_id}: ${c.reason}`;
  }

  const who = (r) => `<span class="audit-actor">${esc(r.actor)}</span>` +
    (r.role ? ` <span class="role role-${esc(r.role)}">${esc(r.role)}</span>` : "");

  function outcome(r) {
    const status = r.status != null ? ` ${r.status}` : "";
    return `<span class="badge ${OUTCOME_BADGE[r.outcome] || "badge-neutral"}">${esc(r.outcome)}${esc(status)}</span>` +
      (r.answer ? ` <span class="audit-answer">station: ${esc(r.answer)}</span>` : "");
  }

  function detail(r) {
    const body = r.summary == null ? "" : JSON.stringify(r.summary);
    const text = [r.reason, body].filter(Boolean).join(" · ");
    return text ? `<code>${esc(text.length > 300 ? text.slice(0, 300) + "…" : text)}</code>` : DASH;
  }

  function row(r) {
    const where = r.method && r.path ? `${r.method} ${r.path}` : "";
    return `<tr data-audit="${esc(r.id)}" class="outcome-${esc(r.outcome)}">
      <td class="nowrap">${esc(dateTime(r.at))}</td>
      <td>${who(r)}</td>
      <td class="nowrap source">${esc(r.source || DASH)}</td>
      <td class="audit-action" title="${esc(where)}">${esc(r.action)}</td>
      <td>${esc(r.target || DASH)}</td>
      <td class="nowrap">${outcome(r)}</td>
      <td class="detail">${detail(r)}</td>
    </tr>`;
  }

  function render() {
    const first = T.total ? T.offset + 1 : 0;
    const last = T.offset + T.rows.length;
    $("#audit-csv").href = "/api/v1/audit.csv" + query();
    $("#audit-count").textContent = `${first}–${last} of ${T.total}`;
    $("#audit-prev").disabled = T.offset === 0;
    $("#audit-next").disabled = last >= T.total;
    $("#audit-body").innerHTML = table("audit-table", "Audit trail",
      ["When", "Who", "From", "What", "Target", "Outcome", "Detail"], T.rows.map(row),
      "No audited action matches.");
    renderChain();
  }

  const localIso = (value) => (value ? isoWithOffset(new Date(value)) : "");

  function readFilters() {
    const f = $("#audit-filters");
    T.filters = {
      actor: f.actor.value.trim(),
      action: f.action.value.trim(),
      target: f.target.value.trim(),
      outcome: f.outcome.value,
      from: localIso(f.from.value),
      to: localIso(f.to.value),
    };
    T.offset = 0;
  }

  A.register("audit", {
    re: /^#\/audit$/, nav: "#/events", title: "Audit trail",
    skeleton: () => `<div class="section-head"><h1>Audit trail</h1>
        <a id="audit-csv" class="btn btn-small" href="/api/v1/audit.csv" download>Download CSV</a></div>
      <nav class="event-tabs" aria-label="Event views"><a href="#/events">Station events</a>
        <a href="#/audit" aria-current="page">Audit trail</a></nav>
      <p id="audit-chain" class="audit-chain" role="status"></p>
      <form id="audit-filters" class="filters audit-filters" aria-label="Filter the audit trail">
        <label>Who <input name="actor" autocomplete="off" spellcheck="false" placeholder="user, token:…, cli:…"></label>
        <label>What <input name="action" autocomplete="off" spellcheck="false" placeholder="command, login…"></label>
        <label>Target <input name="target" autocomplete="off" spellcheck="false" placeholder="station id, site…"></label>
        <label>Outcome <select name="outcome"><option value="">Any</option>
          <option value="ok">ok</option><option value="refused">refused</option><option value="failed">failed</option></select></label>
        <label>From <input name="from" type="datetime-local"></label>
        <label>To <input name="to" type="datetime-local"></label>
        <button class="btn btn-primary" type="submit">Apply</button>
        <button class="btn" type="reset">Clear</button>
      </form>
      <div id="audit-body"></div>
      <div class="pager audit-pager"><span id="audit-count" class="muted" aria-live="polite"></span>
        <button id="audit-prev" class="btn btn-small" type="button">Newer</button>
        <button id="audit-next" class="btn btn-small" type="button">Older</button></div>`,
    mount() {
      const f = $("#audit-filters");
      Object.entries(T.filters).forEach(([k, v]) => {
        if (f[k] && k !== "from" && k !== "to") f[k].value = v;
      });
      f.addEventListener("submit", (e) => { e.preventDefault(); readFilters(); A.views.audit.refresh(); });
      f.addEventListener("reset", () => setTimeout(() => { readFilters(); A.views.audit.refresh(); }));
      $("#audit-prev").addEventListener("click", () => { T.offset = Math.max(0, T.offset - PAGE); A.views.audit.refresh(); });
      $("#audit-next").addEventListener("click", () => { T.offset += PAGE; A.views.audit.refresh(); });
      T.chain = null;
      checkChain();
    },
    async load() {
      const got = await page();
      T.rows = got.rows;
      T.total = got.total;
    },
    render,
    onEvent(topic) {
      // a new row: the first page shows it
      if (topic === "audit.appended" && T.offset === 0) A.views.audit.refresh();
    },
  });
  A.listen(["audit.appended"], () => {});
})();
