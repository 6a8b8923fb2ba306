/* evflex operator app: the alerts view (#/alerts: list with filters, acknowledgement with who
 * and when) and the nav badge (open, unacknowledged alerts) kept live on every view. */
(function () {
  "use strict";
  const { esc, dateTime, debounce, DASH } = EV;
  const A = EV.app;
  const { $, enc, api, run, toast, confirmDialog } = A;

  const TOPICS = ["alert.raised", "alert.cleared", "alert.acked"];
  const RULES = [
    ["station_offline", "Station offline"], ["connector_faulted", "Connector faulted"],
    ["need_at_risk", "Driver's need at risk"], ["profile_rejected", "Profile rejected"],
    ["site_over_limit", "Site over its limit"], ["clock_off", "Station clock off"],
  ];
  const RULE_NAME = Object.fromEntries(RULES);
  const STATES = [["open", "Open"], ["acked", "Acknowledged"], ["cleared", "Cleared"], ["all", "All"]];
  const STATE_BADGE = { open: "badge-bad", acked: "badge-priority", cleared: "badge-ok" };
  const LIMIT = 200;

  const F = { state: "open", rule: "", station: "", site: "" }; // the filters
  let list = [];
  let counts = null;

  /* ---------- the badge in the nav ---------- */

  function setBadge(s) {
    const badge = $("#alert-badge");
    if (!badge || !s) return;
    const n = s.open || 0;
    badge.hidden = n === 0;
    badge.classList.toggle("nav-badge-critical", !!(s.open_by_severity && s.open_by_severity.critical));
    badge.innerHTML = n ? `${esc(n)}<span class="sr-only"> open alert${n === 1 ? "" : "s"}</span>` : "";
  }
  async function loadBadge() {
    try {
      counts = await api("/api/v1/alerts/summary");
      setBadge(counts);
    } catch { /* the next alert event or minute tries again */ }
  }
  const badgeSoon = debounce(loadBadge, 300);

  A.listen(TOPICS, (topic, msg) => {
    badgeSoon();
    const a = msg.data && msg.data.alert;
    if (topic === "alert.raised" && a) toast(`Alert: ${a.message}`, a.severity === "critical" ? "error" : "warn");
  });
  document.addEventListener("DOMContentLoaded", loadBadge);
  setInterval(loadBadge, 60000);

  /* ---------- the list ---------- */

  function query() {
    const q = new URLSearchParams({ state: F.state, limit: String(LIMIT) });
    if (F.rule) q.set("rule", F.rule);
    if (F.station) q.set("station_id", F.station);
    if (F.site) q.set("site_id", F.site);
    return q.toString();
  }

  function subject(a) {
    const parts = [];
    if (a.station_id) parts.push(`<a href="#/stations/${enc(a.station_id)}">${esc(a.station_id)}</a>`);
    if (a.evse_id != null && a.evse_id !== 0) parts.push(`EVSE ${esc(a.evse_id)}`);
    if (a.transaction) parts.push(`tx ${esc(a.transaction)}`);
    if (a.site_id) parts.push(`site ${esc(a.site_id)}`);
    return parts.join(" · ") || DASH;
  }

  function row(a) {
    const state = `<span class="badge ${STATE_BADGE[a.state] || "badge-neutral"}">${esc(a.state)}</span>` +
      (a.cleared_at ? `<span class="muted alert-when">${esc(dateTime(a.cleared_at))}</span>` : "");
    const acked = a.acked_at
      ? `<span class="alert-acked">${esc(a.acked_by)}</span><span class="muted alert-when">${esc(dateTime(a.acked_at))}</span>`
      : A.btn("ack-alert", "Acknowledge", "btn-ack");
    return `<tr data-alert="${esc(a.id)}" class="alert-row">
      <td>${esc(dateTime(a.raised_at))}</td>
      <td><span class="sev sev-${esc(a.severity)}">${esc(a.severity)}</span></td>
      <td>${esc(RULE_NAME[a.rule] || a.rule)}</td>
      <td>${subject(a)}</td>
      <td class="alert-message">${esc(a.message)}</td>
      <td class="alert-state">${state}</td>
      <td class="alert-ack">${acked}</td></tr>`;
  }

  function render() {
    if (counts) {
      $("#alerts-summary").innerHTML = A.summary([
        ["open", String(counts.open), counts.open ? "alert-open" : ""],
        ["acknowledged", String(counts.acked)], ["cleared", String(counts.cleared)]]);
    }
    const more = list.length >= LIMIT ? `<p class="muted">The newest ${LIMIT} are shown.</p>` : "";
    $("#alerts-body").innerHTML = A.table("alerts-table", "Alerts",
      ["Raised", "Severity", "Rule", "Subject", "Message", "State", "Acknowledged"],
      list.map(row), F.state === "open" ? "No open alerts." : "No alerts match.") + more;
  }

  const options = (items, selected) => items.map(([v, label]) =>
    `<option value="${esc(v)}"${v === selected ? " selected" : ""}>${esc(label)}</option>`).join("");

  A.register("alerts", {
    re: /^#\/alerts$/, nav: "#/alerts", title: "Alerts",
    skeleton: () => `<div class="section-head"><h1>Alerts</h1><ul id="alerts-summary" class="summary"></ul></div>
      <form id="alerts-filters" class="filters" role="search" aria-label="Filter alerts">
        <label>State <select id="alerts-state" name="state">${options(STATES, F.state)}</select></label>
        <label>Rule <select id="alerts-rule" name="rule">${options([["", "All"], ...RULES], F.rule)}</select></label>
        <label>Station <input id="alerts-station" name="station" value="${esc(F.station)}" autocomplete="off" spellcheck="false"></label>
        <label>Site <input id="alerts-site" name="site" value="${esc(F.site)}" autocomplete="off" spellcheck="false"></label>
      </form>
      <div id="alerts-body"></div>`,
    mount() {
      const form = $("#alerts-filters");
      const apply = () => {
        F.state = $("#alerts-state").value;
        F.rule = $("#alerts-rule").value;
        F.station = $("#alerts-station").value.trim();
        F.site = $("#alerts-site").value.trim();
        A.views.alerts.refresh();
      };
      form.addEventListener("change", apply);
      form.addEventListener("input", debounce(apply, 400));
      form.addEventListener("submit", (e) => { e.preventDefault(); apply(); });
    },
    async load() {
      [list, counts] = await Promise.all([api("/api/v1/alerts?" + query()), api("/api/v1/alerts/summary")]);
      setBadge(counts);
    },
    render,
    onEvent(topic) {
      if (TOPICS.includes(topic)) A.views.alerts.refresh();
    },
  });

  A.actions({
    async "ack-alert"({ alert }) {
      const a = list.find((x) => String(x.id) === String(alert));
      const ok = await confirmDialog(`Acknowledge alert ${alert}${a ? `: ${a.message}` : ""}?`,
        "", "Acknowledge");
      if (!ok) return;
      await run(`Acknowledge alert ${alert}`,
        () => api(`/api/v1/alerts/${enc(alert)}/ack`, { method: "POST" })
          .then((a) => ({ message: `acknowledged by ${a.acked_by}` })), A.views.alerts.refresh);
    },
  });
})();
