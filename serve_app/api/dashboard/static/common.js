// autocompress dashboard: what every page shares (fetching JSON, polling, formatting, building DOM).
// Text from the store (names, messages) goes in through textContent only, never as HTML.
"use strict";

const AC = (() => {
  const POLL_MS = 1500;

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!response.ok) {
      let detail = "";
      try { detail = (await response.json()).detail || ""; } catch (_) { /* not JSON */ }
      throw new Error(`${url}: HTTP ${response.status} ${detail}`);
    }
    return response.json();
  }

  function setStatus(text, error) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(error));
  }

  // run refresh() now and again POLL_MS after each run ends (slowMs while it says so), until the page goes
  function poll(refresh, slowMs) {
    let slow = false;
    async function tick() {
      try {
        slow = Boolean(await refresh());
        setStatus(`updated ${new Date().toLocaleTimeString()}`, false);
      } catch (err) {
        setStatus(`cannot update: ${err.message}`, true);
      }
      setTimeout(tick, slow && slowMs ? slowMs : POLL_MS);
    }
    tick();
  }

  // the store's times are UTC; a SQLite value may come without its offset
  function parseTime(text) {
    if (!text) return null;
    return new Date(/(Z|[+-]\d\d:\d\d)$/.test(text) ? text : `${text}Z`);
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  function fmtTime(text) {
    const t = parseTime(text);
    if (!t) return "–";
    return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())} ${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}`;
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? `${h}h ${pad(m)}m ${pad(r)}s` : m ? `${m}m ${pad(r)}s` : `${r}s`;
  }

  function elapsed(started, finished) {
    const start = parseTime(started);
    if (!start) return null;
    const end = parseTime(finished) || new Date();
    return (end - start) / 1000;
  }

  function isNumber(x) { return typeof x === "number" && isFinite(x); }

  function fmt(x, digits) {
    return isNumber(x) ? x.toFixed(digits) : "–";
  }

  // el("td", {class: "num"}, "text", otherNode): an element with attributes and children
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function badge(state) { return el("span", { class: `badge ${state}` }, state); }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  // a finished job changes no more: its pages poll slowly
  const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);

  return { POLL_MS, TERMINAL, badge, el, elapsed, fmt, fmtDuration, fmtTime, getJSON, isNumber, parseTime, poll, replaceRows, setStatus };
})();
