/* evflex operator app: the circuit view (#/sites/{id}/circuits): the site's tree of circuits
 * with the load per phase against each limit, the EVSEs under each node, what the load
 * manager gives each EVSE and why an EVSE is held back. Live: follows the site's samples,
 * sessions and meter values. */
(function () {
  "use strict";
  const { esc, num, kw, dateTime, DASH } = EV;
  const A = EV.app;
  const { $, enc, api } = A;

  const NEAR = 0.9; // a phase at this share of its limit or more is "near"
  const TOPICS = /^(site\.(sample|changed)|meter\.values|transaction\.|connector\.status|station\.(connected|disconnected)|ev\.charging_needs)/;
  let T = null; // the tree shown: {site_id, at, policy, voltage, root}

  const amps = (v) => num(v, 1, "A");
  const level = (value, limit) => (limit == null || !(limit > 0) ? "none"
    : value > limit + 0.05 ? "over" : value >= NEAR * limit ? "near" : "ok");

  /** One bar: what is measured against the limit, with the allocation as a marker. */
  function bar(label, load, alloc, limit, fmt) {
    const max = limit > 0 ? limit : Math.max(load, alloc, 1);
    const w = (v) => Math.max(0, Math.min(100, (v / max) * 100)).toFixed(1);
    const state = level(load, limit);
    const text = `${fmt(load)} of ${limit == null ? "no limit" : fmt(limit)}`;
    return `<div class="cv-bar cv-${state}" data-phase="${esc(label)}">
      <span class="cv-bar-label">${esc(label)}</span>
      <span class="cv-bar-track" role="meter" aria-label="${esc(label)} load" aria-valuemin="0"
        aria-valuemax="${esc(max)}" aria-valuenow="${esc(load)}" aria-valuetext="${esc(text)}">
        <span class="cv-bar-fill" style="width:${w(load)}%"></span>
        <span class="cv-bar-alloc" style="left:${w(alloc)}%" title="allocated ${esc(fmt(alloc))}"></span>
      </span>
      <span class="cv-bar-num">${esc(fmt(load))} <span class="muted">/ ${esc(limit == null ? DASH : fmt(limit))}${state === "over" ? " over" : ""}</span>
        <span class="cv-bar-alloc-num muted">alloc. ${esc(fmt(alloc))}</span></span>
    </div>`;
  }

  function bars(n) {
    const out = [];
    const phases = n.phases === 1 ? [0] : [0, 1, 2];
    for (const p of phases) {
      out.push(bar(`L${p + 1}`, n.load_a[p], n.allocated_a[p], n.limit_a ? n.limit_a[p] : null, amps));
    }
    if (n.limit_kw != null || n.kind === "site") {
      const v = T.voltage / 1000;
      const sum = (xs) => xs.reduce((a, b) => a + b, 0) * v;
      out.push(bar("Power", sum(n.load_a), sum(n.allocated_a), n.limit_kw, kw));
    }
    return out.join("");
  }

  function evseItem(e) {
    const drawn = e.phases.map((p) => `L${p} ${amps(e.drawn_a[p - 1])}`).join(", ");
    const badge = e.held_back
      ? `<span class="badge badge-priority cv-held" title="${esc(e.reason.text)}">held back: ${esc(e.reason.text)}</span>`
      : `<span class="cv-reason muted">${esc(e.reason.text)}</span>`;
    const conn = e.connected ? "" : ' <span class="badge badge-off">offline</span>';
    return `<li class="cv-evse${e.held_back ? " is-held" : ""}" data-station="${esc(e.station_id)}" data-evse="${esc(e.evse_id)}"
        data-reason="${esc(e.reason.code)}">
      <div class="cv-evse-head">
        <a href="#/stations/${enc(e.station_id)}">${esc(e.station_id)}</a> / EVSE ${esc(e.evse_id)}${conn}
        <span class="muted small">${esc(e.status || DASH)}</span>
      </div>
      <div class="cv-evse-figures small">
        ${e.reason.code === "idle" ? '<span class="cv-alloc muted">idle</span>'
          : `<span class="cv-alloc">${esc(amps(e.allocated_a))} × ${e.phases.length} ph</span>`}
        <span class="muted">(L${esc(e.phases.join(", L"))})</span>
        <span class="cv-drawn">drawn ${esc(e.transaction_id ? drawn : DASH)}</span>
        ${e.power_kw != null ? `<span class="muted">${esc(kw(e.power_kw))}</span>` : ""}
      </div>
      ${badge}
    </li>`;
  }

  function nodeItem(n) {
    const limit = [n.limit_a ? `${amps(n.limit_a[0])} per phase` : "", n.limit_kw != null ? kw(n.limit_kw) : ""]
      .filter(Boolean).join(", ") || "no limit";
    const head = n.kind === "site" ? "Site" : "Circuit";
    const evses = n.evses.length
      ? `<ul class="cv-evses" aria-label="EVSEs on ${esc(n.name || n.id)}">${n.evses.map(evseItem).join("")}</ul>` : "";
    const kids = n.children.length ? `<ul class="cv-tree">${n.children.map(nodeItem).join("")}</ul>` : "";
    const base = n.base_a.some((x) => x > 0) ? `<span class="muted small">base load ${n.base_a.map(amps).join(" / ")}</span>` : "";
    return `<li class="cv-node cv-${esc(n.kind)}" data-node="${esc(n.id)}">
      <div class="cv-node-card">
        <div class="cv-node-head">
          <h2 class="cv-node-name">${esc(n.name || n.id)} <span class="sub">${head} ${esc(n.id)} · limit ${esc(limit)}</span></h2>
          ${base}
        </div>
        <div class="cv-bars">${bars(n)}</div>
        ${evses}
      </div>
      ${kids}
    </li>`;
  }

  function render() {
    if (!T) return;
    const all = [];
    const walk = (n) => { all.push(...n.evses); n.children.forEach(walk); };
    walk(T.root);
    const held = all.filter((e) => e.held_back).length;
    $("#cv-crumb").textContent = T.root.name || T.site_id;
    $("#cv-crumb").href = `#/sites/${enc(T.site_id)}`;
    $("#cv-summary").innerHTML = A.summary([
      ["EVSEs", String(all.length)],
      ["Held back", String(held), held ? "bad" : ""],
      ["Policy", T.policy],
    ]);
    $("#cv-at").textContent = T.at ? "allocation of " + dateTime(T.at) : "";
    $("#circuits-body").innerHTML = `<ul class="cv-tree cv-root">${nodeItem(T.root)}</ul>`;
  }

  A.register("circuits", {
    re: /^#\/sites\/([^/]+)\/circuits$/, nav: "#/sites", title: "Circuits", delay: 700,
    skeleton: () => `
      <p class="crumbs"><a href="#/sites">Sites</a> / <a id="cv-crumb" href="#/sites">Site</a> / Circuits</p>
      <div class="section-head"><h1>Circuits <small id="cv-at" class="muted"></small></h1></div>
      <ul id="cv-summary" class="summary"></ul>
      <p class="muted small">Bars: measured load per phase against the node's limit
        (amber from ${NEAR * 100} %, red over it); the tick marks what the load manager allocated.</p>
      <div id="circuits-body" aria-live="polite"></div>`,
    async load(id) {
      const tree = await api(`/api/v1/sites/${enc(id)}/circuit-tree`);
      T = tree;
    },
    render,
    onEvent(topic, msg) {
      if (!TOPICS.test(topic)) return;
      const d = (msg && msg.data) || {};
      if (d.site_id != null && T && String(d.site_id) !== String(T.site_id)) return;
      this.refresh();
    },
  });
})();
