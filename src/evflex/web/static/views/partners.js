/* evflex operator app: the roaming partners view (#/partners): OCPI partners with their status,
 * roles, delivery (last success, queue depth, last error), refreshed every few seconds; an
 * invitation form (admins) that shows the versions URL and token A once; retry now (operators),
 * unregister (admins) and a partner's waiting or failed pushes. */
(function () {
  "use strict";
  const { esc, dateTime, DASH } = EV;
  const A = EV.app;
  const { $, enc, api, run, toast, confirmDialog, table } = A;

  const POLL_MS = 3000;
  const ROLES = ["EMSP", "CPO", "HUB", "NSP", "SCSP", "NAP", "OTHER"];
  const ADMINS_ONLY = "admins only";
  const STATUS_BADGE = { registered: "badge-ok", invited: "badge-priority", unregistered: "badge-neutral" };
  const DELIVERY = {
    ok: ["badge-ok", "delivering"], retrying: ["badge-bad", "retrying"], none: ["badge-neutral", "nothing sent yet"],
  };
  const OUTBOX_STATES = [["pending", "Waiting"], ["failed", "Given up"], ["sent", "Sent"]];

  const P = { list: [], us: null, outbox: null, outboxFor: null, outboxState: "pending" };
  const refresh = () => A.views.partners.refresh();
  const findPartner = (id) => P.list.find((p) => String(p.id) === String(id));
  const label = (p) => `${p.country_code}/${p.party_id}${p.business_name ? ` (${p.business_name})` : ""}`;

  /** A button for admins; others see it disabled with the reason. */
  function adminBtn(action, text, cls = "", reason = "") {
    const why = A.isAdmin() ? reason : ADMINS_ONLY;
    return `<button type="button" class="btn btn-small ${cls}" data-action="${esc(action)}"` +
      `${why ? ` disabled title="${esc(why)}"` : ""}>${esc(text)}</button>`;
  }

  const badge = (cls, text) => `<span class="badge ${cls}">${esc(text)}</span>`;
  const when = (iso) => (iso ? `<span class="nowrap">${esc(dateTime(iso))}</span>` : DASH);

  function row(p) {
    const roles = p.roles.map((r) => `${esc(r.role)} <span class="muted">${esc(r.country_code)}/${esc(r.party_id)}</span>`).join("<br>");
    const [dCls, dText] = DELIVERY[p.delivery] || ["badge-neutral", p.delivery];
    const active = p.status === "registered";
    const error = p.last_error
      ? `<span class="partner-error" title="${esc(p.last_error)}">${esc(p.last_error.slice(0, 120))}</span>` +
        `<br><span class="muted small">${esc(dateTime(p.last_error_at))}</span>`
      : DASH;
    return `<tr data-partner="${esc(p.id)}" class="partner-row">
      <td>${esc(p.id)}</td>
      <td><strong>${esc(p.country_code)}/${esc(p.party_id)}</strong>${p.business_name ? `<br><span class="muted">${esc(p.business_name)}</span>` : ""}</td>
      <td class="partner-roles">${roles || DASH}</td>
      <td class="partner-status">${badge(STATUS_BADGE[p.status] || "badge-neutral", p.status)}</td>
      <td class="partner-delivery">${active || p.queue_depth ? badge(dCls, dText) : DASH}</td>
      <td class="partner-success">${when(p.last_success_at)}</td>
      <td class="partner-queue num">${esc(p.queue_depth)}</td>
      <td class="partner-sent num">${esc(p.sent)}</td>
      <td class="partner-last-error">${error}</td>
      <td class="actions"><div class="btns">
        ${A.btn("partner-retry", "Retry now", "", p.queue_depth ? "" : "nothing waiting")}
        ${A.btn("partner-outbox", "Queue", "")}
        ${adminBtn("partner-unregister", p.status === "invited" ? "Withdraw" : "Unregister", "btn-danger",
          p.status === "unregistered" ? "already unregistered" : "")}
      </div></td></tr>`;
  }

  function renderOutbox() {
    const box = $("#partners-outbox");
    if (!box) return;
    const p = P.outboxFor && findPartner(P.outboxFor);
    if (!p || !P.outbox) { box.hidden = true; box.innerHTML = ""; return; }
    if (box.dataset.partner !== String(p.id) || box.hidden) { // the head once: polling keeps the select as it is
      const states = OUTBOX_STATES.map(([v, text]) =>
        `<option value="${v}"${v === P.outboxState ? " selected" : ""}>${esc(text)}</option>`).join("");
      box.innerHTML = `<div class="admin-head"><h2>Pushes to ${esc(label(p))}</h2>
          <label>Show <select id="partners-outbox-state">${states}</select></label>
          <button type="button" class="btn btn-small" id="partners-outbox-close">Close</button></div>
        <div id="partners-outbox-rows"></div>`;
      box.dataset.partner = String(p.id);
      box.hidden = false;
    }
    const rows = P.outbox.map((r) => `<tr data-row="${esc(r.id)}">
      <td>${esc(r.id)}</td><td>${esc(r.module)}</td><td class="nowrap">${esc(r.method)} ${esc(r.path)}</td>
      <td class="nowrap">${esc(dateTime(r.created_at))}</td><td class="num">${esc(r.attempts)}</td>
      <td>${r.done_at ? `${esc(r.outcome)} <span class="muted small">${esc(dateTime(r.done_at))}</span>` : DASH}</td>
      <td>${esc(r.last_error || "") || DASH}</td></tr>`);
    $("#partners-outbox-rows").innerHTML = table("partners-outbox-table", "Pushes to the partner",
      ["Row", "Module", "Request", "Queued", "Tries", "Done", "Last error"],
      rows, P.outboxState === "pending" ? "Nothing waiting." : "None.");
  }

  function render() {
    const us = P.us;
    if (us) {
      $("#partners-us").innerHTML = `We are <strong>${esc(us.country_code)}/${esc(us.party_id)}</strong> ` +
        `(${esc(us.roles.join(", "))}); partners register at <code id="partners-versions-url">${esc(us.versions_url)}</code>.`;
    }
    const registered = P.list.filter((p) => p.status === "registered");
    $("#partners-summary").innerHTML = A.summary([
      ["registered", String(registered.length)],
      ["invited", String(P.list.filter((p) => p.status === "invited").length)],
      ["retrying", String(registered.filter((p) => p.delivery === "retrying").length),
        registered.some((p) => p.delivery === "retrying") ? "bad" : ""],
      ["waiting pushes", String(P.list.reduce((n, p) => n + p.queue_depth, 0))],
    ]);
    $("#partners-body").innerHTML = table("partners-table", "Roaming partners",
      ["Id", "Party", "Roles", "Status", "Delivery", "Last success", "Queue", "Sent", "Last error", "Actions"],
      P.list.map(row), "No partners yet: invite one above.");
    renderOutbox();
  }

  async function loadOutbox() {
    if (!P.outboxFor) { P.outbox = null; return; }
    P.outbox = await api(`/api/v1/ocpi/partners/${enc(P.outboxFor)}/outbox?state=${P.outboxState}&limit=100`);
  }

  /* ---------- the invitation: its token is shown once ---------- */

  function showInvitation(inv) {
    A.showSecret($("#partners-secret"), `Invitation for ${inv.country_code}/${inv.party_id} (${inv.role})`,
      [["Versions URL", inv.versions_url], ["Token A", inv.token]],
      "Give both to the partner. The token is shown only now: evflex keeps only its hash.", "invite", 1);
  }

  async function invite(ev) {
    ev.preventDefault();
    const form = ev.target;
    const out = $("#partners-invite-result");
    const data = new FormData(form);
    const body = {
      role: String(data.get("role")),
      country_code: String(data.get("country_code") || "").trim(),
      party_id: String(data.get("party_id") || "").trim(),
    };
    const name = String(data.get("name") || "").trim();
    if (name) body.name = name;
    out.className = "form-result";
    out.textContent = "";
    try {
      const inv = await api("/api/v1/ocpi/invitations", { method: "POST", body });
      form.reset();
      showInvitation(inv);
      toast(`Invitation for ${inv.country_code}/${inv.party_id} made`);
      refresh();
    } catch (e) {
      out.className = "form-result error";
      out.textContent = `Not invited: ${e.detail || e.message}`;
    }
  }

  const inviteForm = () => {
    const why = A.isAdmin() ? "" : ` disabled title="${ADMINS_ONLY}"`;
    return `<form id="partners-invite" class="partners-invite" aria-label="Invite a partner">
      <label>Role <select id="invite-role" name="role"${why}>${ROLES.map((r) => `<option>${r}</option>`).join("")}</select></label>
      <label>Country code <input id="invite-cc" name="country_code" required maxlength="2" size="3" autocomplete="off" spellcheck="false"${why}></label>
      <label>Party id <input id="invite-pid" name="party_id" required maxlength="3" size="4" autocomplete="off" spellcheck="false"${why}></label>
      <label>Name <input id="invite-name" name="name" maxlength="100" autocomplete="off"${why}></label>
      <button id="invite-submit" class="btn btn-primary" type="submit"${why}>Invite</button>
    </form><p id="partners-invite-result" class="form-result" role="status"></p>`;
  };

  /* ---------- the view ---------- */

  let timer = null;
  const TOPICS = ["ocpi.partner.registered", "ocpi.partner.unregistered"];
  A.listen(TOPICS, (topic) => {
    if (A.S.view === A.views.partners) refresh();
    if (topic === "ocpi.partner.registered") toast("A roaming partner registered");
  });

  A.register("partners", {
    re: /^#\/partners$/, nav: "#/partners", title: "Partners",
    skeleton: () => `<div class="section-head"><h1>Roaming partners</h1><ul id="partners-summary" class="summary"></ul></div>
      <p id="partners-us" class="muted"></p>
      <section id="partners-secret" class="card secret-once" aria-live="polite" hidden></section>
      <h2>Invite a partner</h2>${inviteForm()}
      <div id="partners-body"></div>
      <section id="partners-outbox" class="partners-outbox" hidden></section>`,
    mount() {
      P.outboxFor = null;
      P.outbox = null;
      $("#partners-invite").addEventListener("submit", invite);
      const box = $("#partners-outbox");
      box.addEventListener("change", (ev) => {
        if (ev.target.id !== "partners-outbox-state") return;
        P.outboxState = ev.target.value;
        refresh();
      });
      box.addEventListener("click", (ev) => {
        if (!ev.target.closest("#partners-outbox-close")) return;
        P.outboxFor = null;
        P.outbox = null;
        renderOutbox();
      });
      // live: the delivery state changes with every push; poll while this view is shown
      clearInterval(timer);
      timer = setInterval(() => {
        if (A.S.view === A.views.partners) refresh();
        else { clearInterval(timer); timer = null; }
      }, POLL_MS);
    },
    async load() {
      [P.list, P.us] = await Promise.all([api("/api/v1/ocpi/partners"), P.us || api("/api/v1/ocpi/settings")]);
      await loadOutbox();
    },
    render,
  });

  A.actions({
    async "partner-retry"({ partner }) {
      await run(`Retry partner ${partner}`,
        () => api(`/api/v1/ocpi/partners/${enc(partner)}/retry`, { method: "POST" })
          .then((r) => ({ message: `${r.queue_depth} waiting, sending now` })), refresh);
    },
    async "partner-outbox"({ partner }) {
      P.outboxFor = partner;
      refresh();
    },
    async "partner-unregister"({ partner }) {
      const p = findPartner(partner);
      const what = p && p.status === "invited" ? "Withdraw the invitation of" : "Unregister";
      const ok = await confirmDialog(`${what} ${p ? label(p) : "partner " + partner}? ` +
        "Its token stops working and its waiting pushes are given up.", "", what.split(" ")[0]);
      if (!ok) return;
      await run(`${what} ${p ? label(p) : partner}`,
        () => api(`/api/v1/ocpi/partners/${enc(partner)}`, { method: "DELETE" })
          .then((r) => ({ status: r.status, message: r.problem ? `the partner was not told: ${r.problem}` : "" })),
        refresh);
    },
  });
})();
