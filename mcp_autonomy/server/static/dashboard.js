// mcp-autonomy dashboard. No framework, no network beyond this server (or, as an MCP App, the host).
//
// Two transports behind one interface:
// - "http" (served at /dashboard): REST under /autonomous for the snapshot and the actions, and the
//   server-sent event stream /dashboard/stream for live updates (read with fetch so that the
//   bearer token can be sent as a header; reconnects with Last-Event-ID).
// - "app" (the ui:// resource of the MCP App): JSON-RPC over postMessage with the host, which
//   forwards tools/call to this server: show_dashboard for the snapshot, heal_provider and
//   scale_to for the actions. Hosts do not forward server-sent events, so the app polls.
"use strict";

(function () {
  const MODE = document.documentElement.dataset.mode === "app" ? "app" : "http";
  const MIN_REFRESH_MS = 1000;
  const APP_POLL_MS = 5000;
  const FALLBACK_POLL_MS = 30000;
  const MAX_EVENTS = 200;
  const TOKEN_KEY = "mcp-autonomy-token";

  const $ = (id) => document.getElementById(id);
  let snapshot = null;
  let events = [];
  const seenEvents = new Set();

  // --- small helpers -----------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const dash = "–";
  const fmtPct = (v) => (v === null || v === undefined ? dash : (v * 100).toFixed(v < 0.01 && v > 0 ? 2 : 1) + " %");
  const fmtMs = (v) => (v === null || v === undefined ? dash : v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms");
  const fmtNum = (v, digits = 1) => (v === null || v === undefined ? dash : Number(v).toFixed(digits));
  const fmtDur = (s) => {
    if (s === null || s === undefined) return dash;
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  };
  // Times arrive as ISO 8601 UTC strings ("2026-12-07T10:00:00.123Z"); the chart works in epoch seconds.
  const epochS = (time) => (time === null || time === undefined ? null : Date.parse(time) / 1000);
  const fmtTime = (time) => (time ? new Date(Date.parse(time)).toLocaleTimeString() : dash);
  const fmtDateTime = (time) => (time ? new Date(Date.parse(time)).toLocaleString() : dash);
  const badge = (value, extra) => el("span", { class: "badge " + String(value).replace(/[^a-z_]/gi, "_"), text: value, ...extra });

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  // --- transports --------------------------------------------------------------------------

  function httpTransport() {
    const token = () => sessionStorage.getItem(TOKEN_KEY);
    const headers = (extra) => {
      const h = { Accept: "application/json", ...(extra || {}) };
      if (token()) h.Authorization = "Bearer " + token();
      return h;
    };

    async function call(method, path, body) {
      const response = await fetch(path, {
        method,
        headers: headers(body ? { "Content-Type": "application/json" } : {}),
        body: body ? JSON.stringify(body) : undefined,
        cache: "no-store",
      });
      if (response.status === 401) {
        askForToken();
        throw new Error("this server needs an access token");
      }
      const data = await response.json().catch(() => null);
      if (response.status === 403 && data && data.error === "insufficient_scope") {
        // The token is valid but may not do this: ask for one that holds the scope named.
        askForToken(data.scope);
        throw new Error("this needs a token with scope " + data.scope);
      }
      if (!response.ok) {
        const error = data && data.error ? data.error : null;
        const where = error && error.field ? error.field + ": " : "";
        throw new Error(where + (error ? error.message : response.status + " " + response.statusText));
      }
      return data;
    }

    let lastEventId = "";
    let streamAbort = null;

    async function stream(onEvent, onState) {
      for (;;) {
        streamAbort = new AbortController();
        try {
          const h = headers({ Accept: "text/event-stream" });
          if (lastEventId) h["Last-Event-ID"] = lastEventId;
          const response = await fetch("/dashboard/stream", { headers: h, signal: streamAbort.signal, cache: "no-store" });
          if (response.status === 401 || response.status === 403) {
            const refusal = response.status === 403 ? await response.json().catch(() => null) : null;
            askForToken(refusal && refusal.scope);
            onState("off", "needs token");
            return;
          }
          if (!response.ok || !response.body) throw new Error("stream answered " + response.status);
          onState("on", "live");
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value;
            let cut;
            while ((cut = buffer.indexOf("\n\n")) >= 0) {
              const block = buffer.slice(0, cut);
              buffer = buffer.slice(cut + 2);
              const message = { event: "message", data: "", id: null };
              for (const line of block.split("\n")) {
                if (line.startsWith(":")) continue;
                const colon = line.indexOf(":");
                const field = colon < 0 ? line : line.slice(0, colon);
                const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
                if (field === "data") message.data += (message.data ? "\n" : "") + text;
                else if (field === "event") message.event = text;
                else if (field === "id") message.id = text;
              }
              if (message.id) lastEventId = message.id;
              if (message.event === "engine" && message.data) onEvent(JSON.parse(message.data));
              if (message.event === "hello") onEvent(null);
            }
          }
        } catch (error) {
          if (error.name === "AbortError") return;
        }
        onState("off", "reconnecting");
        await new Promise((resolve) => setTimeout(resolve, 3000));
      }
    }

    return {
      snapshot: () => call("GET", "/autonomous/dashboard"),
      heal: (provider, reason) => call("POST", "/autonomous/heal/" + encodeURIComponent(provider), { reason }),
      scale: (replicas, reason) => call("POST", "/autonomous/scale", { replicas, reason }),
      live: stream,
      restart: () => streamAbort && streamAbort.abort(),
    };
  }

  function appTransport() {
    let nextId = 1;
    const pending = new Map();
    let onSnapshot = () => {};

    function send(message) {
      window.parent.postMessage({ jsonrpc: "2.0", ...message }, "*");
    }
    function request(method, params) {
      const id = nextId++;
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        send({ id, method, params });
      });
    }
    window.addEventListener("message", (event) => {
      if (event.source !== window.parent) return;
      const message = event.data;
      if (!message || message.jsonrpc !== "2.0") return;
      if (message.id !== undefined && pending.has(message.id) && !message.method) {
        const { resolve, reject } = pending.get(message.id);
        pending.delete(message.id);
        if (message.error) reject(new Error(message.error.message || "host error"));
        else resolve(message.result);
        return;
      }
      if (message.method === "ui/notifications/tool-result" && message.params) {
        const data = message.params.structuredContent;
        if (data && data.providers) onSnapshot(data);
      } else if (message.method === "ui/resource-teardown" && message.id !== undefined) {
        send({ id: message.id, result: {} });
      } else if (message.method === "ping" && message.id !== undefined) {
        send({ id: message.id, result: {} });
      }
    });

    const ready = request("ui/initialize", {
      protocolVersion: "2026-01-26",
      appInfo: { name: "mcp-autonomy-dashboard", version: "1" },
      appCapabilities: {},
    }).then((result) => {
      send({ method: "ui/notifications/initialized", params: {} });
      return result;
    });

    async function tool(name, args) {
      await ready;
      const result = await request("tools/call", { name, arguments: args || {} });
      if (result && result.isError) {
        const text = (result.content || []).map((c) => c.text || "").join(" ");
        throw new Error(text || name + " failed");
      }
      return result;
    }

    return {
      snapshot: async () => (await tool("show_dashboard")).structuredContent,
      heal: async (provider, reason) => (await tool("heal_provider", { provider, reason })).structuredContent,
      scale: async (replicas, reason) => (await tool("scale_to", { replicas, reason })).structuredContent,
      live: async (onEvent, onState) => {
        onSnapshot = (data) => render(data);
        onState("on", "polling");
        for (;;) {
          await new Promise((resolve) => setTimeout(resolve, APP_POLL_MS));
          onEvent(null);
        }
      },
      restart: () => {},
    };
  }

  const api = MODE === "app" ? appTransport() : httpTransport();

  // --- rendering ---------------------------------------------------------------------------

  function render(data) {
    snapshot = data;
    const status = data.status;
    const overall = $("overall");
    overall.textContent = status.overall;
    overall.className = "badge " + status.overall;
    $("overall-reason").textContent = status.overall_reason;
    $("updated").textContent = "updated " + fmtTime(data.generated_at);
    renderProviders(data);
    renderScaling(data.scaling);
    renderPredictions(data);
    renderIncidents(data);
    renderOptimizations(data.optimizations);
    mergeEvents(data.events);
  }

  function renderProviders(data) {
    const body = $("providers").tBodies[0];
    body.replaceChildren();
    for (const p of data.providers) {
      const lane = p.lane;
      const tun = lane.tunables;
      const route = [p.name, ...(data.backup_map[p.name] || [])].join(" → ");
      const failedOver = data.failed_over[p.name];
      const healButton = el("button", {
        type: "button",
        class: "heal",
        "data-testid": "heal-" + p.name,
        text: "Heal…",
        onclick: () => confirmHeal(p.name),
      });
      const healthCell = el("td", {}, badge(p.health.status, { "data-testid": "health-" + p.name }));
      if (p.health.last_probe_detail) healthCell.title = p.health.last_probe_detail;
      body.append(
        el(
          "tr",
          { "data-provider": p.name },
          el("th", { scope: "row", text: p.name + (p.critical ? " ★" : "") }),
          healthCell,
          el("td", {}, badge(lane.breaker_state, { "data-testid": "breaker-" + p.name })),
          el("td", { class: "route" }, route, failedOver ? el("div", { class: "warn", text: "traffic → " + failedOver }) : null),
          el("td", { class: "num", text: fmtPct(p.telemetry.error_rate) }),
          el("td", { class: "num", text: fmtMs(p.telemetry.latency_p95_ms) }),
          el("td", { class: "num", text: fmtNum(p.telemetry.requests_per_min) }),
          el("td", { class: "num", text: tun.timeout_s + " s" }),
          el("td", { class: "num", text: String(tun.max_attempts) }),
          el("td", { class: "num", text: tun.rate_limit_per_s + "/s" }),
          el("td", {}, healButton),
        ),
      );
    }
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    return node;
  }

  function renderScaling(scaling) {
    const state = scaling.state;
    $("scaling-summary").textContent = state
      ? `${state.desired} desired, ${state.ready === null ? "ready unknown" : state.ready + " ready"} (${state.backend}: ${state.target}); bounds ${scaling.min_replicas}..${scaling.max_replicas}`
      : "replica state unreadable";
    const input = $("scale-replicas");
    input.min = String(scaling.min_replicas);
    input.max = String(scaling.max_replicas);
    if (!input.value && state) input.value = String(state.desired);

    const chart = $("scaling-chart");
    chart.replaceChildren();
    const W = 640, H = 220, L = 44, R = 8, T = 10, B = 24;
    const end = epochS(snapshot.generated_at);
    const start = end - scaling.window_s;
    // Replica count over the window: a step line from the scaling events, ending at the current count.
    const steps = [];
    let count = state ? state.desired : null;
    const changes = scaling.changes.slice().sort((a, b) => epochS(a.timestamp) - epochS(b.timestamp));
    if (changes.length) count = changes[0].data.from;
    if (count !== null) steps.push([start, count]);
    for (const change of changes) steps.push([epochS(change.timestamp), change.data.to]);
    if (state) steps.push([end, state.desired]);
    const capacity = steps.map(([t, n]) => [t, n * scaling.capacity_tpm_per_instance]);
    const load = scaling.load.map((p) => [epochS(p.at), p.tpm]);
    const top = Math.max(1, ...load.map((p) => p[1]), ...capacity.map((p) => p[1])) * 1.1;
    const x = (t) => L + ((t - start) / (end - start)) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);

    for (let i = 0; i <= 4; i++) {
      const v = (top / 4) * i;
      chart.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
      const label = svg("text", { x: L - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" });
      label.textContent = Math.round(v);
      chart.append(label);
    }
    for (let h = 0; h <= 6; h++) {
      const t = start + h * 3600;
      const label = svg("text", { x: x(t), y: H - 6, class: "axis", "text-anchor": "middle" });
      label.textContent = h === 6 ? "now" : "-" + (6 - h) + "h";
      chart.append(label);
    }
    if (capacity.length) {
      let d = "";
      capacity.forEach(([t, v], i) => {
        const px = x(Math.max(t, start)).toFixed(1);
        d += i === 0 ? `M${px},${y(v).toFixed(1)}` : `H${px}V${y(v).toFixed(1)}`;
      });
      chart.append(svg("path", { d, class: "capacity" }));
    }
    if (load.length) {
      const d = load.map(([t, v], i) => `${i ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join("");
      chart.append(svg("path", { d, class: "load" }));
    } else {
      const note = svg("text", { x: W / 2, y: H / 2, class: "axis", "text-anchor": "middle" });
      note.textContent = "no load measured yet";
      chart.append(note);
    }
  }

  function renderPredictions(data) {
    const scores = data.prediction_scores || {};
    $("prediction-scores").textContent =
      `precision ${fmtPct(scores.precision)}, recall ${fmtPct(scores.recall)}, mean lead time ${fmtDur(scores.mean_lead_time_s)}`;
    const body = $("predictions").tBodies[0];
    body.replaceChildren();
    // Which series still learn their baseline and until when, or why nothing is watched.
    const warmUp = data.prediction_warm_up;
    let warmText = warmUp ? warmUp.reason : "";
    if (warmUp && warmUp.warming_up) {
      const providers = [...new Set(warmUp.series.map((s) => s.provider))].join(", ");
      warmText = `${warmUp.series.length} series of ${providers} warming up until ${fmtTime(warmUp.ready_at)} (no prediction from them before); ${warmUp.series_ready} watched`;
    }
    $("prediction-warm-up").textContent = warmText;
    if (!data.predictions.length) {
      const why = warmText ? "no predictions: " + warmText : "no predictions";
      body.append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: why })));
    }
    for (const p of data.predictions) {
      const indicators = (p.indicators || [])
        .map((i) => `${i.name} ${fmtNum(i.value, 3)}${i.unit ? " " + i.unit : ""} (threshold ${fmtNum(i.threshold, 3)})`)
        .join("; ");
      body.append(
        el(
          "tr",
          { title: (indicators ? indicators + " — " : "") + p.recommended_action },
          el("td", { text: p.provider }),
          el("td", {}, p.type + " ", badge(p.severity)),
          el("td", { class: "num", text: fmtPct(p.confidence) }),
          el("td", { text: fmtTime(p.window_start) + " – " + fmtTime(p.window_end) }),
          el("td", {}, badge(p.status)),
        ),
      );
    }
  }

  function renderIncidents(data) {
    const stats = data.incident_stats || {};
    $("incident-stats").textContent =
      `mean time to detect ${fmtDur(stats.mean_time_to_detect_s)}, to recover ${fmtDur(stats.mean_time_to_recover_s)}`;
    const body = $("incidents").tBodies[0];
    body.replaceChildren();
    if (!data.incidents.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "no incidents" })));
    for (const i of data.incidents) {
      body.append(
        el(
          "tr",
          { title: (i.actions || []).map((a) => `${fmtTime(a.at)} ${a.action}: ${a.detail || ""}`).join("\n") },
          el("td", { text: fmtDateTime(i.opened_at) }),
          el("td", { text: i.provider || "system" }),
          el("td", {}, badge(i.status), " ", badge(i.severity)),
          el("td", { class: "num", text: fmtDur(i.time_to_detect_s) }),
          el("td", { class: "num", text: fmtDur(i.time_to_recover_s) }),
          el("td", { text: i.trigger }),
        ),
      );
    }
  }

  function renderOptimizations(list) {
    const body = $("optimizations").tBodies[0];
    body.replaceChildren();
    if (!list.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "no optimizations yet" })));
    for (const o of list) {
      const figures = [];
      for (const key of Object.keys(o.after || {})) {
        const before = o.before ? o.before[key] : null;
        figures.push(`${key} ${fmtNum(before, 3)} → ${fmtNum(o.after[key], 3)}`);
      }
      const pValues = Object.entries(o.p_values || {}).map(([k, v]) => `p(${k})=${fmtNum(v, 3)}`);
      body.append(
        el(
          "tr",
          { title: o.reason },
          el("td", { text: fmtDateTime(o.created_at) }),
          el("td", { text: o.provider }),
          el("td", { text: o.parameter }),
          el("td", { class: "num", text: `${o.old_value} → ${o.new_value}` }),
          el("td", {}, badge(o.status), el("span", { class: "muted", text: ` ${o.mode}` })),
          el("td", { class: "evidence", text: [o.verdict, ...figures, ...pValues].filter(Boolean).join("; ") || dash }),
        ),
      );
    }
  }

  function mergeEvents(list) {
    let added = false;
    for (const event of list) {
      if (seenEvents.has(event.id)) continue;
      seenEvents.add(event.id);
      events.push(event);
      added = true;
    }
    if (!added) return;
    events.sort((a, b) => epochS(b.timestamp) - epochS(a.timestamp) || b.seq - a.seq);
    if (events.length > MAX_EVENTS) {
      for (const dropped of events.splice(MAX_EVENTS)) seenEvents.delete(dropped.id);
    }
    const log = $("events");
    log.replaceChildren(
      ...events.map((e) =>
        el(
          "li",
          { class: "sev-" + e.severity, "data-type": e.type },
          el("time", { text: fmtTime(e.timestamp) }),
          badge(e.type),
          e.provider ? el("strong", { text: e.provider }) : null,
          el("span", { class: "message", text: e.message }),
        ),
      ),
    );
  }

  // --- refresh scheduling -------------------------------------------------------------------

  let refreshing = false;
  let again = false;
  let lastRefresh = 0;

  async function refresh() {
    if (refreshing) {
      again = true;
      return;
    }
    refreshing = true;
    try {
      const wait = lastRefresh + MIN_REFRESH_MS - Date.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      lastRefresh = Date.now();
      render(await api.snapshot());
      showError("");
    } catch (error) {
      showError("Could not load the dashboard: " + error.message);
    } finally {
      refreshing = false;
      if (again) {
        again = false;
        refresh();
      }
    }
  }

  function onLiveEvent(event) {
    if (event) mergeEvents([event]);
    refresh();
  }

  function onLiveState(state, label) {
    const live = $("live");
    live.className = "live " + state;
    live.textContent = label;
  }

  // --- actions (each asks for confirmation and a reason) -------------------------------------

  let pendingAction = null;

  function ask(title, detail, action) {
    pendingAction = action;
    $("confirm-title").textContent = title;
    $("confirm-detail").textContent = detail;
    $("confirm-reason").value = "";
    $("confirm-problem").hidden = true;
    $("confirm").showModal();
    $("confirm-reason").focus();
  }

  function confirmHeal(provider) {
    const p = snapshot && snapshot.providers.find((x) => x.name === provider);
    const detail = p
      ? `${provider} is ${p.health.status}, breaker ${p.lane.breaker_state}. Its adapter is re-initialised and probed now.`
      : "";
    ask(`Heal ${provider} now?`, detail, (reason) => api.heal(provider, reason).then((result) => {
      return `heal ${provider}: ${result && result.succeeded ? "succeeded" : "did not succeed"}`;
    }));
  }

  // Buttons, not form submission: an MCP App host may sandbox the page without allow-forms.
  document.querySelector('[data-testid="scale-button"]').addEventListener("click", () => {
    const replicas = Number($("scale-replicas").value);
    const current = snapshot && snapshot.scaling.state ? snapshot.scaling.state.desired : "?";
    ask(`Scale from ${current} to ${replicas} replicas?`, "The scaler's guards still apply afterwards.", (reason) =>
      api.scale(replicas, reason).then(() => `scaled to ${replicas}`),
    );
  });

  $("confirm-cancel").addEventListener("click", () => {
    pendingAction = null;
    $("confirm").close();
  });

  async function confirmAction() {
    const reason = $("confirm-reason").value.trim();
    if (reason.length < 3) {
      $("confirm-problem").textContent = "Give a reason of at least 3 characters: it goes to the audit log.";
      $("confirm-problem").hidden = false;
      $("confirm-reason").focus();
      return;
    }
    const action = pendingAction;
    pendingAction = null;
    $("confirm").close();
    if (!action) return;
    try {
      await action(reason);
      showError("");
    } catch (error) {
      showError(error.message);
    }
    refresh();
  }

  $("confirm-ok").addEventListener("click", confirmAction);
  $("confirm-reason").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      confirmAction();
    }
  });

  // --- access token (static token or OAuth access token) ---------------------------------------------------------------------------

  function askForToken(scope) {
    $("token-why").textContent = scope
      ? "This needs a token with scope " + scope + ":"
      : "This server needs an access token:";
    $("token-form").hidden = false;
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    $("token-form").hidden = true;
    api.restart();
    refresh();
    startLive();
  });

  let liveStarted = false;
  function startLive() {
    if (liveStarted) return;
    liveStarted = true;
    api.live(onLiveEvent, onLiveState).finally(() => {
      liveStarted = false;
    });
  }

  // A slow safety refresh: figures that move without an event (request rates, uptime).
  setInterval(refresh, MODE === "app" ? APP_POLL_MS * 6 : FALLBACK_POLL_MS);
  refresh();
  startLive();
})();
