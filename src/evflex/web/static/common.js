/* evflex — helpers shared by the operator app, the login page and the driver page. */
(function () {
  "use strict";

  const MINUS = "\u2212";
  const DASH = "\u2013";

  /** Escape a value for insertion into HTML (text or attribute). */
  function esc(value) {
    return String(value ?? "").replace(/[&<>"']/g, (c) => ({
      "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
    })[c]);
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

  /** Number with fixed digits, a real minus sign and an optional unit; null -> "–". */
  function num(v, digits = 1, unit = "") {
    if (!isNum(v)) return DASH;
    const s = Math.abs(v).toFixed(digits);
    const sign = v < 0 && Number(s) !== 0 ? MINUS : "";
    return sign + s + (unit ? " " + unit : "");
  }
  const kw = (v) => num(v, 1, "kW");
  const kwh = (v) => num(v, isNum(v) && Math.abs(v) < 1 ? 2 : 1, "kWh");
  const pct = (v) => num(v, 0, "%");
  const money = (v) => num(v, 2);
  const perKwh = (v) => (isNum(v) ? num(v, 3) + "/kWh" : DASH);

  function toDate(iso) {
    if (!iso) return null;
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? null : d;
  }

  /** Short local time; the date is added when it is not today. */
  function time(iso) {
    const d = toDate(iso);
    if (!d) return DASH;
    const today = d.toDateString() === new Date().toDateString();
    const opts = { hour: "2-digit", minute: "2-digit" };
    return d.toLocaleString(undefined, today ? opts : { month: "short", day: "numeric", ...opts });
  }

  /** Local date and time with seconds (event log). */
  function dateTime(iso) {
    const d = toDate(iso);
    return d ? d.toLocaleString(undefined, {
      year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    }) : DASH;
  }

  /** "12 s ago", "5 min ago", "3 h ago", "2 d ago". */
  function ago(seconds) {
    if (!isNum(seconds)) return DASH;
    const s = Math.max(0, Math.round(seconds));
    if (s < 120) return s + " s ago";
    if (s < 7200) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  /** ISO 8601 with the browser's timezone offset, e.g. 2024-05-01T17:30:00+02:00. */
  function isoWithOffset(d) {
    const p = (n) => String(Math.trunc(Math.abs(n))).padStart(2, "0");
    const off = -d.getTimezoneOffset();
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:` +
      `${p(d.getMinutes())}:${p(d.getSeconds())}${off < 0 ? "-" : "+"}${p(off / 60)}:${p(off % 60)}`;
  }

  /** Value for an <input type="datetime-local"> from an ISO string. */
  const toLocalInput = (iso) => {
    const d = toDate(iso);
    return d ? isoWithOffset(d).slice(0, 16) : "";
  };

  class ApiError extends Error {
    constructor(status, detail, retryAfter = null) {
      super(detail);
      this.status = status;
      this.detail = detail;
      this.retryAfter = retryAfter;
    }
  }

  /** Readable text from an error body: a string detail, or a list of validation errors. */
  function detailText(body, res) {
    const d = body && typeof body === "object" ? body.detail : body;
    if (Array.isArray(d)) {
      return d.map((e) => {
        if (typeof e !== "object" || e === null) return String(e);
        const where = Array.isArray(e.loc) ? e.loc.filter((x) => x !== "body").join(".") : "";
        return (where ? where + ": " : "") + (e.msg || JSON.stringify(e));
      }).join("; ");
    }
    if (typeof d === "string" && d.trim()) return d.trim().slice(0, 300);
    if (d) return JSON.stringify(d);
    return `HTTP ${res.status}${res.statusText ? " " + res.statusText : ""}`;
  }

  /** fetch wrapper: JSON in and out; throws ApiError with a readable detail on failure. */
  async function api(path, opts) {
    return (await call(path, opts)).data;
  }

  /** A list page and the number of all that match (X-Total-Count): {rows, total}. */
  async function apiPage(path) {
    const { data, res } = await call(path);
    return { rows: data, total: parseInt(res.headers.get("X-Total-Count") || "0", 10) };
  }

  /** "?a=1&b=x" from the params whose value is set ("" when none is). */
  function queryString(params) {
    const p = new URLSearchParams();
    Object.entries(params).forEach(([k, v]) => {
      if (v !== "" && v != null) p.set(k, v);
    });
    const s = p.toString();
    return s ? "?" + s : "";
  }

  async function call(path, { method = "GET", body, headers = {} } = {}) {
    const init = {
      method,
      headers: { Accept: "application/json", ...headers },
      credentials: "same-origin",
      cache: "no-store",
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "Network error: " + e.message);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = text; }
    }
    if (!res.ok) {
      const retry = parseInt(res.headers.get("Retry-After") || "", 10);
      throw new ApiError(res.status, detailText(data, res), Number.isFinite(retry) ? retry : null);
    }
    return { data, res };
  }

  /** Run fn at most once per `ms`, trailing (calls during the wait are merged). */
  function debounce(fn, ms) {
    let timer = null;
    return () => {
      if (timer) return;
      timer = setTimeout(() => { timer = null; fn(); }, ms);
    };
  }

  /** <dl> content from [label, value, attribute name?, attribute value?, hint?] items. */
  function figures(items) {
    return items.map(([label, value, attr, key, hint]) =>
      `<div><dt>${esc(label)}</dt><dd${attr ? ` ${attr}="${esc(key)}"` : ""}>${esc(value)}` +
      `${hint ? ` <small class="muted">${esc(hint)}</small>` : ""}</dd></div>`).join("");
  }

  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  /** Theme colours for uPlot axes. */
  function axis(extra = {}) {
    return {
      stroke: cssVar("--muted"),
      grid: { stroke: cssVar("--grid"), width: 1 },
      ticks: { stroke: cssVar("--grid"), width: 1 },
      ...extra,
    };
  }

  /** A uPlot chart that follows its container's width. */
  function chart(el, opts, data) {
    const size = () => ({ width: Math.max(240, el.clientWidth), height: opts.height });
    const u = new uPlot({ ...opts, ...size() }, data, el);
    const ro = new ResizeObserver(() => {
      const s = size();
      if (s.width !== u.width) u.setSize(s);
    });
    ro.observe(el);
    const destroy = u.destroy.bind(u);
    u.destroy = () => { ro.disconnect(); destroy(); };
    return u;
  }

  /** uPlot draw hook: a dashed vertical line labelled "now" at getX() (unix seconds). */
  function nowMarker(getX) {
    return (u) => {
      const x = getX();
      if (x == null) return;
      const px = u.valToPos(x, "x", true);
      const { left, top, width, height } = u.bbox;
      if (px < left || px > left + width) return;
      const ctx = u.ctx;
      const r = window.devicePixelRatio || 1;
      ctx.save();
      ctx.strokeStyle = ctx.fillStyle = cssVar("--muted");
      ctx.lineWidth = r;
      ctx.setLineDash([4 * r, 4 * r]);
      ctx.beginPath();
      ctx.moveTo(px, top);
      ctx.lineTo(px, top + height);
      ctx.stroke();
      ctx.font = `${11 * r}px system-ui, sans-serif`;
      ctx.fillText("now", px + 4 * r, top + 12 * r);
      ctx.restore();
    };
  }

  window.EV = {
    esc, isNum, num, kw, kwh, pct, money, perKwh, toDate, time, dateTime, ago,
    isoWithOffset, toLocalInput, ApiError, api, apiPage, queryString, debounce, figures, cssVar, axis, chart, nowMarker,
    DASH, MINUS,
  };
})();
