/* evflex — admin view (#/admin/{stations,cards,users,tokens}): onboard, edit and remove stations,
 * manage id tokens (cards), dashboard accounts and API tokens. Every change is confirmed and its
 * answer shown; what the role may not do is shown disabled with the reason. */
(function () {
  "use strict";
  const { esc, dateTime, toLocalInput, isoWithOffset, DASH } = EV;
  const A = EV.app;
  const { $, enc, api, run, confirmDialog, table } = A;

  const RANK = { viewer: 0, operator: 1, admin: 2 };
  const TABS = [
    { id: "stations", label: "Stations", reads: "viewer" },
    { id: "cards", label: "Cards", reads: "operator",
      denied: "Card numbers are personal data: operators and admins only." },
    { id: "users", label: "Users", reads: "admin", denied: "Dashboard accounts are for admins only." },
    { id: "tokens", label: "API tokens", reads: "admin", denied: "API tokens are for admins only." },
  ];
  const ADMINS_ONLY = "admins only";
  const CARD_STATUSES = ["Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx", "NoCredit",
    "NotAllowedTypeEVSE", "NotAtThisLocation", "NotAtThisTime", "Unknown"];
  const CARD_TYPES = ["ISO14443", "ISO15693", "eMAID", "Central", "KeyCode", "Local", "MacAddress",
    "NoAuthorization"];
  const ROLES = ["viewer", "operator", "admin"];

  const D = { tab: TABS[0], stations: [], sites: [], circuits: [], cards: [], users: [], tokens: [] };
  const mayRead = (tab) => !!A.me && RANK[A.me.role] >= RANK[tab.reads];
  const tabOf = (id) => TABS.find((t) => t.id === id) || TABS[0];
  const refresh = () => A.views.admin.refresh();
  const val = (f, name) => String(f.get(name) ?? "").trim();
  const orNull = (v) => (v === "" ? null : v);

  /** A button for admins; others see it disabled with the reason. */
  function adminBtn(action, label, cls = "", reason = "", attr = "data-action") {
    const why = A.isAdmin() ? reason : ADMINS_ONLY;
    return `<button type="button" class="btn btn-small ${cls}" ${attr}="${esc(action)}"` +
      `${why ? ` disabled title="${esc(why)}"` : ""}>${esc(label)}</button>`;
  }

  /** A tab's heading with its add button beside it (left: toasts show top right). */
  const head = (title, kind, label) => `<div class="admin-head"><h2>${esc(title)}</h2>` +
    `${adminBtn(kind, label, "btn-primary", "", "data-add")}</div>`;

  const options = (values, selected, label = (v) => v) => values.map((v) =>
    `<option value="${esc(v)}"${String(v) === String(selected ?? "") ? " selected" : ""}>${esc(label(v))}</option>`).join("");

  /** A random password from the URL-safe alphabet (6 bits per character, no bias). */
  function randomPassword(length = 24) {
    const abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    return Array.from(crypto.getRandomValues(new Uint8Array(length)), (b) => abc[b & 63]).join("");
  }

  /** A password field with a generator (the generated one is shown, to be handed over). */
  function passwordField(id, label, hint, { min, max, required = false }) {
    return `<div class="field"><label for="${id}">${esc(label)}</label>
      <div class="row"><input id="${id}" name="password" type="password" minlength="${min}" maxlength="${max}"
        autocomplete="new-password" spellcheck="false"${required ? " required" : ""}>
        <button type="button" class="btn btn-small" data-generate="${id}">Generate</button></div>
      <small class="muted">${esc(hint)}</small></div>`;
  }

  /** A secret the server shows once (TOTP key, API token): kept on screen until dismissed. */
  const showSecret = (title, items, note) => A.showSecret($("#admin-secret"), title, items, note);

  // The dialog's generators, copy buttons and dependent selects (fields of this view only).
  const fields = $("#confirm-fields");
  fields.addEventListener("click", (ev) => {
    const gen = ev.target.closest("[data-generate]");
    if (gen) {
      const input = document.getElementById(gen.dataset.generate);
      input.value = randomPassword(24);
      input.type = "text";
      input.select();
    }
  });
  fields.addEventListener("change", (ev) => {
    if (ev.target.id === "sf-site") fillCircuits(ev.target.value, "");
    if (ev.target.id === "sf-phases") $("#sf-rotation-field").hidden = ev.target.value !== "1";
  });

  /* ---------- stations ---------- */

  function fillCircuits(siteId, selected) {
    const sel = $("#sf-circuit");
    const list = D.circuits.filter((c) => String(c.site_id) === String(siteId));
    sel.innerHTML = '<option value="">None (the site itself)</option>' +
      options(list.map((c) => c.id), selected, (id) => {
        const c = list.find((x) => x.id === id);
        return c.name ? `${id} (${c.name})` : id;
      });
    sel.disabled = !siteId;
  }

  function stationFields(s) {
    const editing = !!s;
    const profile = (s && s.security_profile) || 1;
    const move = editing && s.connected;
    const v2 = editing && /^2/.test(s.ocpp_version || "");
    return `${editing ? "" : `<div class="field"><label for="sf-id">Station id</label>
        <input id="sf-id" name="id" required maxlength="48" pattern="[^\\/\\s]+" autocomplete="off" spellcheck="false"></div>`}
      <div class="field"><label for="sf-site">Site</label><select id="sf-site" name="site_id">
        <option value="">None</option>${options(D.sites.map((x) => x.id), s && s.site_id,
          (id) => { const x = D.sites.find((y) => y.id === id); return x.name ? `${x.name} (${id})` : id; })}</select></div>
      <div class="field"><label for="sf-circuit">Circuit</label><select id="sf-circuit" name="circuit_id"></select></div>
      <div class="field"><label for="sf-phases">Phases</label><select id="sf-phases" name="phases">
        ${options([3, 1], (s && s.phases) || 3)}</select></div>
      <div class="field" id="sf-rotation-field"${s && s.phases === 1 ? "" : " hidden"}>
        <label for="sf-rotation">Grid phase (single-phase station)</label>
        <select id="sf-rotation" name="phase_rotation"><option value="">Unknown</option>${options([1, 2, 3], s && s.phase_rotation, (p) => "L" + p)}</select></div>
      <div class="field"><label for="sf-max">Station limit per phase (A)</label>
        <input id="sf-max" name="max_current_a" type="number" min="1" step="0.1" value="${esc((s && s.max_current_a) ?? "")}"></div>
      ${passwordField("sf-password", "Password (HTTP Basic)", editing
        ? (s.has_password ? "Set. Empty keeps it; 16 to 40 characters replace it." : "None set. 16 to 40 characters.")
        : "Profiles 1 and 2: 16 to 40 characters, to be set in the station too.", { min: 16, max: 40 })}
      ${editing && s.has_password ? '<label class="inline"><input type="checkbox" name="clear_password" value="1"> Remove the password</label>' : ""}
      <fieldset class="choices"><legend>Security profile</legend>
        <select id="sf-profile" name="security_profile" aria-label="Security profile">${options([1, 2, 3], profile, (p) => ({
          1: "1: password, ws or wss", 2: "2: TLS and password", 3: "3: TLS client certificate" })[p])}</select>
        ${editing ? `<p class="muted small">Now: profile ${profile}${s.security_profile_reached ? `, reached ${s.security_profile_reached}` : ""}.
          ${move ? "The station is online: a new profile is sent to it over OCPP and stored once it accepts (lowering is forced and recorded as a security event)."
            : "The station is offline: only the stored requirement changes; it must connect with that profile."}</p>` : ""}
        ${move && v2 ? `<div class="field"><label for="sf-url">New CSMS URL (OCPP 2.x)</label>
          <input id="sf-url" name="csms_url" type="url" placeholder="wss://host:port/ocpp" spellcheck="false"></div>` : ""}
      </fieldset>`;
  }

  /** The station's topology and password from the form; nulls clear a value on edit. */
  function stationBody(f, editing) {
    const phases = Number(val(f, "phases"));
    const body = {
      site_id: orNull(val(f, "site_id")),
      circuit_id: orNull(val(f, "circuit_id")),
      phases,
      phase_rotation: phases === 1 && val(f, "phase_rotation") ? Number(val(f, "phase_rotation")) : null,
      max_current_a: val(f, "max_current_a") ? Number(val(f, "max_current_a")) : null,
    };
    if (val(f, "password")) body.password = val(f, "password");
    else if (f.get("clear_password")) body.clear_password = true;
    if (editing) return body;
    const created = { id: val(f, "id"), security_profile: Number(val(f, "security_profile")) };
    Object.entries(body).forEach(([k, v]) => { if (v !== null) created[k] = v; });
    return created;
  }

  async function stationDialog(title, s, okLabel) {
    const answer = confirmDialog(title, stationFields(s), okLabel);
    fillCircuits((s && s.site_id) || "", s && s.circuit_id);
    return answer;
  }

  async function addStation() {
    const f = await stationDialog("Onboard a station", null, "Add station");
    if (!f) return;
    const body = stationBody(f, false);
    await run(`Add station ${body.id}`, async () => {
      await api("/api/v1/stations", { method: "POST", body });
      return { status: "added", message: body.password ? "set the same password in the station" : "" };
    }, refresh);
  }

  async function editStation({ station }) {
    const s = D.stations.find((x) => String(x.id) === station);
    if (!s) return;
    const f = await stationDialog(`Edit station ${station}`, s, "Save");
    if (!f) return;
    const body = stationBody(f, true);
    const now = s.security_profile || 1;
    const want = Number(val(f, "security_profile"));
    const move = want !== now && s.connected;
    if (want !== now && !s.connected) body.security_profile = want;
    await run(`Save station ${station}`, async () => {
      await api(`/api/v1/stations/${enc(station)}`, { method: "PATCH", body });
      return { status: "saved" };
    });
    if (move) {
      const req = { profile: want, force: want < now };
      if (val(f, "csms_url")) req.csms_url = val(f, "csms_url");
      await run(`Security profile ${want} for ${station}`, async () => {
        const r = await api(`/api/v1/stations/${enc(station)}/security-profile`, { method: "POST", body: req });
        return { status: r.accepted ? "accepted" : "not accepted by the station",
          message: `stored profile ${r.security_profile}`, accepted: r.accepted };
      });
    }
    refresh();
  }

  async function removeStation({ station }) {
    const ok = await confirmDialog(`Remove station ${station}? Its registration, settings and password are deleted.`, "", "Remove");
    if (!ok) return;
    await run(`Remove station ${station}`, async () => {
      await api(`/api/v1/stations/${enc(station)}`, { method: "DELETE" });
      return { status: "removed" };
    }, refresh);
  }

  function stationRow(s) {
    const profile = s.security_profile || 1;
    return `<tr data-station="${esc(s.id)}">
      <th scope="row">${esc(s.id)}${s.vendor || s.model ? `<div class="sub">${esc([s.vendor, s.model].filter(Boolean).join(" "))}</div>` : ""}</th>
      <td class="site">${esc(s.site_id ?? DASH)}</td>
      <td class="circuit">${esc(s.circuit_id ?? DASH)}</td>
      <td class="phases">${esc(s.phases ?? 3)}${s.phases === 1 && s.phase_rotation ? ` <span class="sub">L${esc(s.phase_rotation)}</span>` : ""}</td>
      <td class="num">${s.max_current_a != null ? esc(s.max_current_a) + " A" : DASH}</td>
      <td class="security">profile ${esc(profile)}${s.security_profile_reached ? `<div class="sub">reached ${esc(s.security_profile_reached)}</div>` : ""}</td>
      <td class="password">${s.has_password ? "set" : DASH}</td>
      <td class="conn-state"><span class="badge ${s.connected ? "badge-ok" : "badge-off"}">${s.connected ? "online" : "offline"}</span>${s.ocpp_version ? `<div class="sub">OCPP ${esc(s.ocpp_version)}</div>` : ""}</td>
      <td class="actions"><div class="btns">${adminBtn("station-edit", "Edit")}${adminBtn("station-remove", "Remove", "btn-danger")}</div></td>
    </tr>`;
  }

  const renderStations = () =>
    head("Stations", "station", "Add station") +
    table("admin-stations", "Stations", ["Station", "Site", "Circuit", "Phases", "Limit", "Security", "Password", "Connection", "Actions"],
      D.stations.map(stationRow), "No stations registered yet.");

  /* ---------- cards (id tokens) ---------- */

  const findCard = (id) => D.cards.find((c) => c.id_token === id);

  function cardFields(c) {
    return `${c ? "" : `<div class="field"><label for="card-id">Card id (e.g. the RFID UID)</label>
        <input id="card-id" name="id_token" required maxlength="36" autocomplete="off" spellcheck="false"></div>`}
      <div class="field"><label for="card-status">Status</label><select id="card-status" name="status">${options(CARD_STATUSES, (c && c.status) || "Accepted")}</select></div>
      <div class="field"><label for="card-type">Type</label><select id="card-type" name="type">${options(
        CARD_TYPES.includes(c && c.type) || !c ? CARD_TYPES : [c.type, ...CARD_TYPES], (c && c.type) || "ISO14443")}</select></div>
      <div class="field"><label for="card-expiry">Expires (empty: never)</label>
        <input id="card-expiry" name="expiry" type="datetime-local" value="${esc(toLocalInput(c && c.expiry))}"></div>
      <div class="field"><label for="card-parent">Group (parent id token)</label>
        <input id="card-parent" name="parent_id_token" maxlength="36" spellcheck="false" value="${esc((c && c.parent_id_token) || "")}"></div>`;
  }

  const cardBody = (f, id) => ({
    id_token: id,
    status: val(f, "status"),
    type: val(f, "type"),
    expiry: val(f, "expiry") ? isoWithOffset(new Date(val(f, "expiry"))) : null,
    parent_id_token: orNull(val(f, "parent_id_token")),
  });

  const putCard = (body) => api(`/api/v1/id-tokens/${enc(body.id_token)}`, { method: "PUT", body });

  async function addCard() {
    const f = await confirmDialog("Add a card", cardFields(null), "Add card");
    if (!f) return;
    const body = cardBody(f, val(f, "id_token"));
    await run(`Add card ${body.id_token}`, async () => {
      const c = await api("/api/v1/id-tokens", { method: "POST", body });
      return { status: "added", message: c.status };
    }, refresh);
  }

  async function editCard({ card }) {
    const c = findCard(card);
    if (!c) return;
    const f = await confirmDialog(`Edit card ${card}`, cardFields(c), "Save");
    if (!f) return;
    await run(`Save card ${card}`, async () => ({ status: "saved", message: (await putCard(cardBody(f, card))).status }), refresh);
  }

  async function blockCard({ card }) {
    const c = findCard(card);
    if (!c) return;
    const status = c.status === "Blocked" ? "Accepted" : "Blocked";
    const ok = await confirmDialog(status === "Blocked"
      ? `Block card ${card}? Stations refuse it from now on.` : `Unblock card ${card}? It is accepted again.`, "",
    status === "Blocked" ? "Block" : "Unblock");
    if (!ok) return;
    const body = { id_token: c.id_token, status, type: c.type, expiry: c.expiry, parent_id_token: c.parent_id_token };
    await run(`${status === "Blocked" ? "Block" : "Unblock"} card ${card}`, async () => ({ status: (await putCard(body)).status }), refresh);
  }

  async function deleteCard({ card }) {
    const ok = await confirmDialog(`Delete card ${card}? Stations no longer know it (it is refused as unknown).`, "", "Delete");
    if (!ok) return;
    await run(`Delete card ${card}`, async () => {
      await api(`/api/v1/id-tokens/${enc(card)}`, { method: "DELETE" });
      return { status: "deleted" };
    }, refresh);
  }

  function cardRow(c) {
    const expired = c.expiry && new Date(c.expiry) <= new Date();
    const cls = c.status === "Accepted" && !expired ? "badge-ok" : "badge-bad";
    return `<tr data-card="${esc(c.id_token)}">
      <th scope="row"><code>${esc(c.id_token)}</code></th>
      <td>${esc(c.type || DASH)}</td>
      <td class="card-status"><span class="badge ${cls}">${esc(c.status)}</span>${expired ? '<div class="sub">expired</div>' : ""}</td>
      <td class="nowrap">${c.expiry ? esc(dateTime(c.expiry)) : "never"}</td>
      <td>${esc(c.parent_id_token || DASH)}</td>
      <td class="nowrap">${esc(dateTime(c.created_at))}</td>
      <td class="actions"><div class="btns">${adminBtn("card-block", c.status === "Blocked" ? "Unblock" : "Block")}${adminBtn("card-edit", "Edit")}${adminBtn("card-delete", "Delete", "btn-danger")}</div></td>
    </tr>`;
  }

  const renderCards = () =>
    head("Cards", "card", "Add card") +
    table("admin-cards", "Cards (id tokens)", ["Card", "Type", "Status", "Expires", "Group", "Added", "Actions"],
      D.cards.map(cardRow), "No cards yet.");

  /* ---------- users ---------- */

  const isMe = (name) => !!A.me && A.me.kind === "session" && A.me.username === name;

  function totpSecret(u, what) {
    showSecret(`TOTP key of ${u.username}`, [["TOTP secret", u.totp_secret], ["otpauth URI", u.otpauth_uri]],
      `${what} Shown once: add it to ${u.username}'s authenticator app now (type the secret or make a QR code of the URI).`);
  }

  async function addUser() {
    const f = await confirmDialog("Add a dashboard account", `
      <div class="field"><label for="user-name">User name</label>
        <input id="user-name" name="username" required maxlength="64" pattern="[A-Za-z0-9][A-Za-z0-9._@\\-]*" autocomplete="off" spellcheck="false"></div>
      <div class="field"><label for="user-role">Role</label><select id="user-role" name="role">${options(ROLES, "operator")}</select></div>
      ${passwordField("user-password", "Password", "At least 10 characters; hand it over another way than the TOTP key.", { min: 10, max: 1024, required: true })}`,
    "Add user");
    if (!f) return;
    const body = { username: val(f, "username"), role: val(f, "role"), password: String(f.get("password")) };
    await run(`Add user ${body.username}`, async () => {
      const u = await api("/api/v1/users", { method: "POST", body });
      totpSecret(u, `Account ${u.username} (${u.role}) created.`);
      return { status: "added" };
    }, refresh);
  }

  const patchUser = (name, body) => api(`/api/v1/users/${enc(name)}`, { method: "PATCH", body });

  async function userRole({ user }) {
    const u = D.users.find((x) => x.username === user);
    if (!u) return;
    const f = await confirmDialog(`Role of ${user}`, `<div class="field"><label for="user-new-role">Role</label>
      <select id="user-new-role" name="role">${options(ROLES, u.role)}</select></div>`, "Change role");
    if (!f) return;
    await run(`Role of ${user}`, async () => ({ status: (await patchUser(user, { role: val(f, "role") })).role }), refresh);
  }

  async function userDisabled(user, disabled) {
    const ok = await confirmDialog(disabled
      ? `Disable ${user}? Their browsers are logged out and they cannot log in until enabled again.`
      : `Enable ${user}? They can log in again.`, "", disabled ? "Disable" : "Enable");
    if (!ok) return;
    await run(`${disabled ? "Disable" : "Enable"} ${user}`, async () => {
      const u = await patchUser(user, { disabled });
      return { status: u.disabled ? "disabled" : "enabled" };
    }, refresh);
  }

  async function userTotp({ user }) {
    const ok = await confirmDialog(`Give ${user} a new TOTP key (a lost phone)? The old one stops working and their browsers are logged out.`, "", "Reset TOTP");
    if (!ok) return;
    await run(`Reset TOTP of ${user}`, async () => {
      totpSecret(await api(`/api/v1/users/${enc(user)}/reset-totp`, { method: "POST" }), "New key.");
      return { status: "done" };
    }, refresh);
  }

  async function userPassword({ user }) {
    const f = await confirmDialog(`A new password for ${user}? Their browsers are logged out${isMe(user) ? " (yours too)" : ""}.`,
      passwordField("user-new-password", "New password", "At least 10 characters.", { min: 10, max: 1024, required: true }),
      "Set password");
    if (!f) return;
    await run(`New password for ${user}`, async () => {
      await api(`/api/v1/users/${enc(user)}/reset-password`, { method: "POST", body: { password: String(f.get("password")) } });
      return { status: "set", message: "browser sessions ended" };
    }, refresh);
  }

  function userRow(u) {
    const self = isMe(u.username) ? "your own account" : "";
    return `<tr data-user="${esc(u.username)}">
      <th scope="row">${esc(u.username)}${self ? ' <span class="sub">(you)</span>' : ""}</th>
      <td><span class="role role-${esc(u.role)}">${esc(u.role)}</span></td>
      <td class="user-state"><span class="badge ${u.disabled ? "badge-bad" : "badge-ok"}">${u.disabled ? "disabled" : "enabled"}</span></td>
      <td>${u.totp_configured ? "set up" : '<span class="muted">not used yet</span>'}</td>
      <td class="nowrap">${esc(dateTime(u.created_at))}</td>
      <td class="nowrap">${u.last_login_at ? esc(dateTime(u.last_login_at)) : "never"}</td>
      <td class="actions"><div class="btns">${adminBtn("user-role", "Role", "", self)}${u.disabled
        ? adminBtn("user-enable", "Enable") : adminBtn("user-disable", "Disable", "btn-danger", self)}${adminBtn("user-totp", "Reset TOTP")}${adminBtn("user-password", "Reset password")}</div></td>
    </tr>`;
  }

  const renderUsers = () =>
    head("Users", "user", "Add user") +
    table("admin-users", "Dashboard accounts", ["User", "Role", "Status", "TOTP", "Created", "Last login", "Actions"],
      D.users.map(userRow), "No accounts yet.");

  /* ---------- API tokens ---------- */

  async function addToken() {
    const f = await confirmDialog("Create an API token", `
      <div class="field"><label for="token-name">What it is for</label>
        <input id="token-name" name="name" maxlength="128" required autocomplete="off"></div>
      <div class="field"><label for="token-role">Role</label><select id="token-role" name="role">${options(ROLES, "viewer")}</select></div>`,
    "Create token");
    if (!f) return;
    const body = { name: val(f, "name"), role: val(f, "role") };
    await run(`Create API token ${body.name}`, async () => {
      const t = await api("/api/v1/api-tokens", { method: "POST", body });
      showSecret(`API token ${t.id}: ${t.name} (${t.role})`, [["Token", t.token]],
        "Shown once: only its hash is kept. Send it as 'Authorization: Bearer <token>'.");
      return { status: "created" };
    }, refresh);
  }

  async function revokeToken({ tokenId }) {
    const t = D.tokens.find((x) => String(x.id) === tokenId);
    const ok = await confirmDialog(`Revoke API token ${tokenId}${t && t.name ? ` (${t.name})` : ""}? Its next request is refused.`, "", "Revoke");
    if (!ok) return;
    await run(`Revoke API token ${tokenId}`, async () => {
      await api(`/api/v1/api-tokens/${enc(tokenId)}`, { method: "DELETE" });
      return { status: "revoked" };
    }, refresh);
  }

  function tokenRow(t) {
    return `<tr data-token-id="${esc(t.id)}">
      <th scope="row">${esc(t.id)}</th>
      <td>${esc(t.name || DASH)}</td>
      <td><span class="role role-${esc(t.role)}">${esc(t.role)}</span></td>
      <td class="nowrap">${esc(dateTime(t.created_at))}</td>
      <td class="nowrap">${t.last_used_at ? esc(dateTime(t.last_used_at)) : "never"}</td>
      <td class="token-state"><span class="badge ${t.revoked ? "badge-bad" : "badge-ok"}">${t.revoked ? "revoked" : "active"}</span></td>
      <td class="actions"><div class="btns">${adminBtn("token-revoke", "Revoke", "btn-danger", t.revoked ? "already revoked" : "")}</div></td>
    </tr>`;
  }

  const renderTokens = () =>
    head("API tokens", "token", "Create token") +
    table("admin-tokens", "API tokens", ["Id", "Name", "Role", "Created", "Last used", "Status", "Actions"],
      D.tokens.map(tokenRow), "No API tokens yet.") +
    '<p class="muted small">Tokens of the in-process tools live in memory and are not listed.</p>';

  /* ---------- the view ---------- */

  const ADD = { station: addStation, card: addCard, user: addUser, token: addToken };
  const RENDER = { stations: renderStations, cards: renderCards, users: renderUsers, tokens: renderTokens };

  A.register("admin", {
    re: /^#\/admin\/?([a-z]*)$/, nav: "#/admin", title: "Admin",
    skeleton: () => `<h1>Admin</h1>
      <nav class="admin-tabs" aria-label="Admin sections">${TABS.map((t) =>
        `<a href="#/admin/${t.id}" data-tab="${t.id}">${esc(t.label)}</a>`).join("")}</nav>
      <p id="admin-readonly" class="admin-notice" hidden></p>
      <section id="admin-secret" class="card secret-once" aria-live="polite" hidden></section>
      <div id="admin-body"></div>`,
    mount() {
      const tab = tabOf(A.S.params[0]);
      document.querySelectorAll(".admin-tabs a").forEach((a) => {
        if (a.dataset.tab === tab.id) a.setAttribute("aria-current", "page");
      });
      if (!A.isAdmin() && mayRead(tab)) {
        const note = $("#admin-readonly");
        note.textContent = `Read only: you are signed in as ${A.me.role}; adding, changing and removing needs the admin role.`;
        note.hidden = false;
      }
      $("#admin-body").addEventListener("click", (ev) => {
        const b = ev.target.closest("button[data-add]");
        if (b && !b.disabled) ADD[b.dataset.add]();
      });
    },
    async load(id) {
      const tab = (D.tab = tabOf(id));
      if (!mayRead(tab)) return;
      if (tab.id === "stations") {
        [D.stations, D.sites, D.circuits] = await Promise.all([
          api("/api/v1/stations"), api("/api/v1/sites"), api("/api/v1/circuits")]);
      } else if (tab.id === "cards") D.cards = await api("/api/v1/id-tokens");
      else if (tab.id === "users") D.users = await api("/api/v1/users");
      else D.tokens = await api("/api/v1/api-tokens");
    },
    render() {
      const tab = D.tab;
      $("#admin-body").innerHTML = mayRead(tab) ? RENDER[tab.id]()
        : `<p class="alert alert-warn admins-only" role="note">${esc(tab.denied)} You are signed in as ${esc(A.me.role)}.</p>`;
    },
    onEvent(topic) {
      if (D.tab.id === "stations" && /^station\./.test(topic)) refresh();
    },
  });

  A.actions({
    "station-edit": editStation,
    "station-remove": removeStation,
    "card-block": blockCard,
    "card-edit": editCard,
    "card-delete": deleteCard,
    "user-role": userRole,
    "user-disable": ({ user }) => userDisabled(user, true),
    "user-enable": ({ user }) => userDisabled(user, false),
    "user-totp": userTotp,
    "user-password": userPassword,
    "token-revoke": revokeToken,
  });
})();
