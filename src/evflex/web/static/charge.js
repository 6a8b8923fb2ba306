/* evflex — driver page for one charging point: /charge/{station_id}/{evse_id}. */
(function () {
  "use strict";
  const { num, kw, kwh, pct, money, perKwh, time, DASH } = EV;
  const $ = (id) => document.getElementById(id);
  const form = $("prefs-form");

  const [, rawStation, rawEvse] = location.pathname.split("/").filter(Boolean);
  const stationId = rawStation ? decodeURIComponent(rawStation) : "";
  const evseId = parseInt(rawEvse, 10);
  const KEY = `evflex-driver:${stationId}:${evseId}`;
  const store = {
    get() { try { return localStorage.getItem(KEY); } catch { return null; } },
    set(v) { try { localStorage.setItem(KEY, v); } catch { /* private mode: keep in memory */ } },
    drop() { try { localStorage.removeItem(KEY); } catch { /* ignore */ } },
  };

  let token = store.get();
  let session = null;
  let dirty = false; // the driver is editing the form: do not overwrite it with fresh data
  let chart = null;
  let loading = false;

  /* ---------- API with the session token ---------- */

  async function claim() {
    const r = await EV.api("/api/v1/driver/sessions", {
      method: "POST", body: { station_id: stationId, evse_id: evseId },
    });
    token = r.token;
    store.set(token);
  }

  async function dapi(path, opts = {}, retried = false) {
    if (!token) await claim();
    try {
      return await EV.api(path, { ...opts, headers: { Authorization: "Bearer " + token } });
    } catch (e) {
      if (e.status === 401 && !retried) {
        token = null;
        store.drop();
        return dapi(path, opts, true);
      }
      throw e;
    }
  }

  /* ---------- rendering ---------- */

  function setNote(text, cls = "muted") {
    const note = $("session-note");
    note.textContent = text;
    note.className = cls;
  }

  function showMissing(title, note) {
    session = null;
    $("session-state").textContent = title;
    setNote(note);
    $("session-figures").hidden = true;
    $("session-body").hidden = true;
  }

  function v2x(s) {
    if (s.v2x_state) return s.v2x_state;
    return s.power_kw > 0.05 ? "charging" : s.power_kw < -0.05 ? "discharging" : "idle";
  }

  function stateText(s) {
    if (!s.active) return ["Charging session ended", "Thank you for charging with us."];
    const since = s.started_at ? `Started ${time(s.started_at)}. ` : "";
    switch (v2x(s)) {
      case "charging":
        return [s.priority ? "Charging as fast as possible" : "Charging", since.trim()];
      case "discharging":
        return ["Discharging to the grid",
          since + "Your car is helping the grid; you will still get what you asked for by departure."];
      default:
        return ["Waiting", since + "Your car is plugged in; it charges when the plan below says so."];
    }
  }

  function expectedText(s) {
    const parts = [];
    if (s.expected_soc_at_departure != null) parts.push(`about ${pct(s.expected_soc_at_departure)} battery`);
    if (s.expected_kwh_at_departure != null) parts.push(`${kwh(s.expected_kwh_at_departure)} charged`);
    if (!parts.length) {
      return s.departure_at ? "The expected result is not known yet." : "Tell us when you leave to see what you will get.";
    }
    return `${s.departure_at ? "By " + time(s.departure_at) : "By departure"}: ${parts.join(", ")}.`;
  }

  /** The plan as a step line of the EVSE's total power (kW): each step holds until the next
   * one, the last until plan_end (departure). */
  function planData(s) {
    const tsec = (iso) => { const d = EV.toDate(iso); return d ? d.getTime() / 1000 : null; };
    const steps = (s.plan || []).map((p) => [tsec(p.start), p.power_kw ?? 0])
      .filter((p) => p[0] != null).sort((a, b) => a[0] - b[0]);
    if (!steps.length) return null;
    const last = steps[steps.length - 1];
    const end = tsec(s.plan_end);
    const xs = steps.map((p) => p[0]);
    const ys = steps.map((p) => p[1]);
    if (end != null && end > last[0]) { xs.push(end); ys.push(last[1]); }
    return [xs, ys];
  }

  function renderPlan(s) {
    const el = $("plan-chart");
    const data = planData(s);
    if (!data) {
      if (chart) { chart.destroy(); chart = null; }
      el.innerHTML = '<p class="muted">No plan yet.</p>';
      return;
    }
    if (chart) { chart.setData(data); return; }
    el.textContent = "";
    const c = EV.cssVar("--c-ev-in");
    chart = EV.chart(el, {
      height: 200,
      cursor: { drag: { x: false, y: false } },
      legend: { live: false },
      scales: { x: { time: true }, kW: { range: (u, min, max) => [Math.min(0, min), Math.max(1, max) * 1.1] } },
      series: [{}, {
        label: "Planned power", scale: "kW", stroke: c, fill: c + "40", width: 2,
        paths: uPlot.paths.stepped({ align: 1 }), points: { show: false },
        value: (u, v) => (v == null ? DASH : kw(v)),
      }],
      axes: [EV.axis(), EV.axis({ scale: "kW", label: "kW", size: 44 })],
    }, data);
  }

  function fillForm(s) {
    if (dirty) return;
    $("departure").value = EV.toLocalInput(s.departure_at);
    $("energy-kwh").value = s.need_kwh != null ? Number(s.need_kwh.toFixed(1)) : "";
    $("battery-kwh").value = s.battery_kwh ?? "";
    $("allow-discharge").checked = !!s.allow_discharge && !!s.can_discharge;
  }

  /** The verdict as a sentence, with times in the browser's time zone. */
  function verdictText(s) {
    const by = s.departure_at ? time(s.departure_at) : "your departure";
    if (s.status === "ACCEPTED") {
      let text = `You will have what you asked for by ${by}.`;
      if (s.allow_discharge && s.can_discharge) text += " Your car may give energy back to the grid meanwhile.";
      if (s.priority) text += " It charges as fast as it can now.";
      return text;
    }
    if (s.status === "NOT_POSSIBLE") {
      const advice = s.priority
        ? "It already charges as fast as it can. Leave later or ask for less."
        : "Leave later, ask for less, or press \u201cCharge as fast as possible\u201d.";
      return `This cannot be met: by ${by} the car can get at most about ${kwh(s.best_kwh_at_departure)}` +
        ` of the ${kwh(s.energy_target_kwh)} you asked for. ${advice}`;
    }
    return s.message || "";
  }

  function render(s) {
    session = s;
    const [title, note] = stateText(s);
    const state = $("session-state");
    if (state.textContent !== title) state.textContent = title;
    setNote(note);
    $("session-figures").hidden = false;
    $("session-body").hidden = false;
    $("power").textContent = kw(s.power_kw);
    $("energy").textContent = kwh(s.energy_kwh);
    $("soc").textContent = pct(s.soc_percent);
    $("exported").textContent = kwh(s.exported_kwh);
    $("exported").parentElement.hidden = !s.can_discharge && !s.exported_kwh;

    const price = [
      ["Price now", perKwh(s.import_price_per_kwh)],
      ["Cost so far", money(s.cost_so_far)],
    ];
    if (s.can_discharge || s.reward_so_far) {
      price.push(["Reward for energy given back", money(s.reward_so_far)],
        ["Paid for energy given back", perKwh(s.export_price_per_kwh)]);
    }
    $("price").innerHTML = EV.figures(price);

    renderPlan(s);
    $("expected-soc").textContent = expectedText(s);

    const fast = $("fast-charge");
    fast.textContent = s.priority ? "Stop fast charging" : "Charge as fast as possible";
    fast.setAttribute("aria-pressed", String(!!s.priority));
    fast.classList.toggle("is-on", !!s.priority);
    fast.disabled = !s.active;

    const allow = $("allow-discharge");
    allow.disabled = !s.can_discharge;
    $("discharge-note").hidden = !!s.can_discharge;
    $("save-prefs").disabled = !s.active;
    fillForm(s);

    const out = $("prefs-result");
    const text = verdictText(s);
    if (out.textContent !== text) out.textContent = text;
    out.className = "form-result " + ({ ACCEPTED: "accepted", NOT_POSSIBLE: "not-possible", NO_NEEDS: "no-needs" }[s.status] || "");
  }

  let gone = false; // no such charger: stop asking

  function handleError(e, out) {
    if (e.status === 404 && /^no such charger/i.test(e.detail || "")) {
      token = null;
      store.drop();
      gone = true;
      showMissing("No such charger", "Check the code on the charger, or ask the operator.");
      $("where").textContent = "";
    } else if (e.status === 404) {
      token = null;
      store.drop();
      showMissing("No charging session on this charger",
        "Plug in your car and start charging; this page updates by itself.");
    } else if (e.status === 409) {
      showMissing("This session is open on another device", e.detail);
    } else if (out) {
      out.textContent = e.detail || e.message;
      out.className = "form-result error";
    } else {
      setNote("Could not update: " + (e.detail || e.message), "note-error");
    }
  }

  async function refresh() {
    if (loading || gone) return;
    loading = true;
    try {
      render(await dapi("/api/v1/driver/session"));
    } catch (e) {
      handleError(e);
    } finally {
      loading = false;
    }
  }

  /** Run an action that answers with the session; show errors in `out`. */
  async function act(button, out, fn) {
    button.disabled = true;
    try {
      const s = await fn();
      render(s);
      return s;
    } catch (e) {
      handleError(e, out);
      return null;
    } finally {
      button.disabled = !session || !session.active;
    }
  }

  /* ---------- form and buttons ---------- */

  function showGoal() {
    const goal = form.goal.value;
    form.querySelectorAll("[data-goal]").forEach((el) => { el.hidden = el.dataset.goal !== goal; });
  }
  form.addEventListener("change", (e) => { if (e.target.name === "goal") showGoal(); });
  form.addEventListener("input", () => { dirty = true; });

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const err = $("prefs-error");
    const n = (id) => $(id).valueAsNumber;
    const problems = [];
    const body = {};
    const dep = $("departure").value;
    if (!dep || Number.isNaN(new Date(dep).getTime())) problems.push("Choose when you leave.");
    else body.departure_time = EV.isoWithOffset(new Date(dep));
    if (form.goal.value === "energy") {
      if (n("energy-kwh") > 0) body.energy_kwh = n("energy-kwh");
      else problems.push("Enter the energy you need in kWh.");
    } else {
      if (n("target-soc") > 0 && n("target-soc") <= 100) body.target_soc = n("target-soc");
      else problems.push("Enter a battery level between 1 and 100 %.");
      if (!(n("battery-kwh") > 0)) problems.push("Enter your battery size in kWh.");
    }
    if (n("battery-kwh") > 0) body.battery_kwh = n("battery-kwh");
    body.allow_discharge = !$("allow-discharge").disabled && $("allow-discharge").checked;
    err.textContent = problems.join(" ");
    if (problems.length) return;
    const s = await act($("save-prefs"), $("prefs-result"),
      () => dapi("/api/v1/driver/session/preferences", { method: "PUT", body }));
    if (s) { dirty = false; fillForm(s); }
  });

  $("fast-charge").addEventListener("click", async () => {
    if (!session) return;
    const on = !session.priority;
    const out = $("fast-result");
    const s = await act($("fast-charge"), out,
      () => dapi("/api/v1/driver/session/fast", { method: on ? "POST" : "DELETE" }));
    if (s) {
      out.textContent = s.priority ? "Fast charging is on." : "Fast charging is off; back to your plan.";
      out.className = "form-result accepted";
    }
  });

  /* ---------- start ---------- */

  if (!stationId || !Number.isFinite(evseId)) {
    showMissing("No such charger", "This link does not name a charging point.");
    return;
  }
  $("where").textContent = `Charger ${stationId} · point ${num(evseId, 0)}`;
  refresh();
  setInterval(() => { if (!document.hidden) refresh(); }, 10000);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
})();
