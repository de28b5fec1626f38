// The live dashboard: polls /api/stats, /api/lobbies and /metrics every second (no reload).
// Rates come from the differences of the counters between two polls; latency from the
// switchboard_ping_rtt_seconds histogram over the last 30 s. With `api.key` set, the key is
// asked once and kept in sessionStorage. In cluster mode the search finds connections on every
// node and the charts can show any node's last 15 minutes (a node selector).
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var KEY = "switchboard.apiKey";
  var POLL_MS = 1000;
  var prev = null;          // previous stats sample {t, stats}
  var rtt = [];             // last 30 histogram samples {sum, count, buckets}
  var history = [];         // last 120 rates {in, out}
  var timer = null;
  var inFlight = false;

  function fmt(n) {
    if (n === null || n === undefined || isNaN(n)) return "–";
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + " M";
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + " k";
    return String(Math.round(n * 10) / 10);
  }
  function bytes(n) {
    if (n === null || isNaN(n)) return "–";
    if (n >= 1048576) return (n / 1048576).toFixed(1) + " MiB";
    if (n >= 1024) return (n / 1024).toFixed(1) + " KiB";
    return Math.round(n) + " B";
  }
  function duration(s) {
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (s % 60) + "s";
  }
  function status(state, text) {
    var el = $("status");
    el.dataset.state = state;
    el.textContent = text;
  }

  function headers() {
    var key = sessionStorage.getItem(KEY);
    return key ? { Authorization: "Bearer " + key } : {};
  }

  function getJson(path) {
    return fetch(path, { headers: headers(), cache: "no-store" }).then(function (r) {
      if (r.ok) return r.json();
      return r.json().catch(function () { return {}; }).then(function (body) {
        var err = new Error((body.error && body.error.message) || ("HTTP " + r.status));
        err.status = r.status;
        err.code = body.error && body.error.code;
        throw err;
      });
    });
  }

  // The Prometheus text of /metrics is unauthenticated; latency is optional ("if available").
  function getRtt() {
    return fetch("/metrics", { cache: "no-store" }).then(function (r) {
      return r.ok ? r.text() : "";
    }).then(function (text) {
      var sample = { sum: null, count: null, buckets: [] };
      text.split("\n").forEach(function (line) {
        var m;
        if ((m = line.match(/^switchboard_ping_rtt_seconds_sum(?:\{\})? ([0-9.eE+-]+)/))) sample.sum = parseFloat(m[1]);
        else if ((m = line.match(/^switchboard_ping_rtt_seconds_count(?:\{\})? ([0-9.eE+-]+)/))) sample.count = parseFloat(m[1]);
        else if ((m = line.match(/^switchboard_ping_rtt_seconds_bucket\{le="([^"]+)"\} ([0-9.eE+-]+)/))) {
          sample.buckets.push([m[1] === "+Inf" ? Infinity : parseFloat(m[1]), parseFloat(m[2])]);
        }
      });
      return sample.count === null ? null : sample;
    }, function () { return null; });
  }

  function renderRtt(sample) {
    if (!sample) {
      $("latency").textContent = "n/a";
      $("latency-sub").textContent = "no ping measured yet";
      return;
    }
    rtt.push(sample);
    if (rtt.length > 31) rtt.shift();
    var first = rtt[0];
    var dc = sample.count - first.count, ds = sample.sum - first.sum;
    var scope = "last 30 s";
    if (dc <= 0) { dc = sample.count; ds = sample.sum; scope = "since start"; }
    if (dc <= 0) {
      $("latency").textContent = "n/a";
      $("latency-sub").textContent = "no ping measured yet";
      return;
    }
    var mean = ds / dc * 1000;
    $("latency").textContent = (mean < 10 ? mean.toFixed(2) : mean.toFixed(0)) + " ms";
    // p95 upper bound from the buckets over the same window.
    var p95 = null;
    for (var i = 0; i < sample.buckets.length; i++) {
      var le = sample.buckets[i][0];
      var old = scope === "last 30 s" ? (first.buckets[i] ? first.buckets[i][1] : 0) : 0;
      if (sample.buckets[i][1] - old >= 0.95 * dc) { p95 = le; break; }
    }
    $("latency-sub").textContent = "mean round trip, " + scope + " (" + fmt(dc) + " pings)" +
      (p95 !== null ? "; p95 \u2264 " + (p95 === Infinity ? "\u221e" : p95 * 1000 + " ms") : "");
  }

  function renderReasons(id, map) {
    var dl = $(id);
    dl.textContent = "";
    var keys = Object.keys(map || {}).sort();
    if (keys.length === 0) {
      var dd = document.createElement("dd");
      dd.className = "muted";
      dd.textContent = "none";
      dl.appendChild(dd);
    }
    keys.forEach(function (k) {
      var dt = document.createElement("dt"); dt.textContent = k;
      var dd = document.createElement("dd"); dd.textContent = fmt(map[k]);
      dl.appendChild(dt); dl.appendChild(dd);
    });
  }

  function renderSpark() {
    var max = 1;
    history.forEach(function (h) { max = Math.max(max, h.in, h.out); });
    function points(key) {
      return history.map(function (h, i) {
        return (120 - (history.length - 1 - i)) + "," + (29 - h[key] / max * 28).toFixed(1);
      }).join(" ");
    }
    $("spark-in").setAttribute("points", points("in"));
    $("spark-out").setAttribute("points", points("out"));
  }

  function renderStats(s, now) {
    $("connections").textContent = String(s.total_connections);
    $("max-connections").textContent = fmt(s.max_connections);
    $("users").textContent = String(s.users);
    var pct = Number(s.capacity_percent) || 0;
    $("capacity").textContent = pct.toFixed(2);
    $("capacity-fill").style.width = Math.min(100, pct) + "%";
    var gauge = $("capacity-gauge");
    gauge.setAttribute("aria-valuenow", String(pct));
    gauge.dataset.level = pct >= 95 ? "critical" : pct >= 80 ? "warn" : "ok";
    $("messages-in").textContent = fmt(s.messages_in);
    $("messages-out").textContent = fmt(s.messages_out);
    $("dropped").textContent = fmt(s.messages_dropped);
    $("overflows").textContent = fmt(s.queue_overflows);
    $("stale").textContent = fmt(s.stale_closed);
    $("uptime").textContent = duration(s.uptime_seconds || 0);
    $("node").textContent = "node " + (s.node_id || "?") + (s.draining ? " \u00b7 draining" : "");
    renderReasons("rejections", s.rejections);
    renderReasons("closes", s.closes);
    if (prev && now > prev.t && s.uptime_seconds >= prev.stats.uptime_seconds) {
      var dt = (now - prev.t) / 1000;
      var rate = function (k) { return Math.max(0, (s[k] - prev.stats[k]) / dt); };
      var rin = rate("messages_in"), rout = rate("messages_out");
      $("rate-in").textContent = fmt(rin);
      $("rate-out").textContent = fmt(rout);
      $("bytes-in").textContent = bytes(rate("bytes_in"));
      $("bytes-out").textContent = bytes(rate("bytes_out"));
      history.push({ in: rin, out: rout });
      if (history.length > 120) history.shift();
      renderSpark();
    }
    prev = { t: now, stats: s };
  }

  function renderLobbies(list) {
    list.sort(function (a, b) { return b.connections - a.connections || (a.lobby < b.lobby ? -1 : 1); });
    var body = $("lobbies");
    body.textContent = "";
    var max = 1;
    list.forEach(function (l) { max = Math.max(max, l.connections); });
    list.slice(0, 200).forEach(function (l) {
      var tr = document.createElement("tr");
      tr.dataset.lobby = l.lobby;
      var name = document.createElement("td"); name.className = "lobby-name"; name.textContent = l.lobby;
      var c = document.createElement("td"); c.className = "num conns"; c.textContent = String(l.connections);
      var u = document.createElement("td"); u.className = "num users"; u.textContent = String(l.users);
      var barTd = document.createElement("td"); barTd.className = "barcol";
      var bar = document.createElement("div"); bar.className = "bar";
      bar.style.width = (l.connections / max * 100) + "%";
      barTd.appendChild(bar);
      tr.appendChild(name); tr.appendChild(c); tr.appendChild(u); tr.appendChild(barTd);
      body.appendChild(tr);
    });
    $("lobby-count").textContent = String(list.length);
    $("no-lobbies").hidden = list.length > 0;
  }

  function askKey(message) {
    $("key-form").hidden = false;
    $("key-error").textContent = message || "";
    status("error", "API key needed");
    $("api-key").focus();
  }

  function poll() {
    timer = null;
    inFlight = true;
    var used = sessionStorage.getItem(KEY);
    Promise.all([getJson("/api/stats"), getJson("/api/lobbies"), getRtt()]).then(function (r) {
      inFlight = false;
      var now = performance.now();
      $("key-form").hidden = true;
      $("api-off").hidden = true;
      renderStats(r[0], now);
      renderLobbies(r[1]);
      renderRtt(r[2]);
      status(r[0].draining ? "warn" : "open", r[0].draining ? "draining" : "live");
      $("updated").textContent = new Date().toLocaleTimeString();
      timer = setTimeout(poll, POLL_MS);
    }, function (err) {
      inFlight = false;
      if (err.status === 401) {
        if (sessionStorage.getItem(KEY) !== used) { poll(); return; } // a key came meanwhile
        // Wait for a key: polling resumes when it is entered.
        sessionStorage.removeItem(KEY);
        askKey(used ? "That key was refused." : "");
        return;
      }
      if (err.status === 403 && err.code === "api_disabled") {
        $("api-off").hidden = false;
        $("api-off").textContent = "The server's HTTP API is off: set api.key to use the dashboard.";
        status("error", "API off");
      } else {
        status("error", "server unreachable");
      }
      prev = null;
      timer = setTimeout(poll, POLL_MS);
    });
  }

  // Find and act: every action is an HTTP API call with the tab's key.
  function call(method, path, body) {
    var init = { method: method, headers: headers(), cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (json) {
        if (r.ok) return json;
        throw new Error((json.error && (json.error.code + ": " + json.error.message)) || ("HTTP " + r.status));
      });
    });
  }
  var seg = encodeURIComponent;
  function result(text, bad) {
    $("act-result").textContent = text;
    $("act-result").dataset.kind = bad ? "error" : "ok";
  }
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }
  var none = function (v) { return v === null || v === undefined; };
  function renderFound(connections) {
    var body = $("found");
    body.textContent = "";
    connections.forEach(function (c) {
      var tr = document.createElement("tr");
      tr.dataset.connection = c.id;
      tr.dataset.node = c.node_id || "";
      // In cluster mode, a node that did not answer in time: what Redis records, marked.
      var live = c.live !== false;
      tr.dataset.live = String(live);
      cell(tr, c.id, "conn-id");
      cell(tr, c.node_id || "–", "node");
      cell(tr, c.user_id);
      cell(tr, (c.lobbies || []).join(", ") || "–");
      cell(tr, c.ip);
      cell(tr, none(c.protocol) ? "–" : "v" + c.protocol);
      cell(tr, none(c.connected_at) ? "–" : new Date(c.connected_at).toLocaleTimeString());
      cell(tr, none(c.rtt_ms) ? "–" : c.rtt_ms.toFixed(1) + " ms", "num");
      cell(tr, none(c.transport) ? "–" : c.transport);
      cell(tr, none(c.queued) ? "–" : String(c.queued), "num");
      cell(tr, live ? "yes" : "unavailable (" + (c.unavailable || "no answer") + ")", live ? "live" : "live unavailable");
      var kick = document.createElement("button");
      kick.type = "button";
      kick.className = "kick";
      kick.textContent = "Kick";
      kick.addEventListener("click", function () {
        call("DELETE", "/api/connections/" + seg(c.id)).then(function () {
          result("Kicked " + c.id + " (4009).");
          tr.remove();
        }, function (e) { result(e.message, true); });
      });
      cell(tr, "").appendChild(kick);
      body.appendChild(tr);
    });
    $("found-table").hidden = connections.length === 0;
  }
  var partial = "";  // why the last search may be incomplete
  function find(query) {
    partial = "";
    var byUser = function () {
      return call("GET", "/api/users/" + seg(query)).then(function (u) {
        $("kick-user").hidden = u.connections.length === 0;
        $("kick-user").dataset.user = u.user_id;
        if (u.cluster_unavailable) partial = " Redis is down: this node's connections only.";
        return u.connections;
      });
    };
    // A connection id names its node (`NODE-SEQ`); anything else is a user.
    var lookup = query.indexOf("-") > 0
      ? call("GET", "/api/connections/" + seg(query)).then(function (c) {
          $("kick-user").hidden = false;
          $("kick-user").dataset.user = c.user_id;
          return [c];
        }, byUser)
      : byUser();
    return lookup.then(function (found) {
      renderFound(found);
      var nodes = {};
      var silent = 0;
      found.forEach(function (c) { nodes[c.node_id] = true; if (c.live === false) silent++; });
      var n = Object.keys(nodes).length;
      result((found.length === 0 ? "No connection of " + query + "." :
        found.length + " connection(s) on " + n + " node(s)." +
        (silent ? " " + silent + " without live details: their node did not answer in time." : "")) + partial);
    }, function (e) { renderFound([]); result(e.message, true); });
  }
  $("find-form").addEventListener("submit", function (e) {
    e.preventDefault();
    find($("find").value.trim());
  });
  $("kick-user").addEventListener("click", function () {
    var user = $("kick-user").dataset.user;
    call("DELETE", "/api/users/" + seg(user)).then(function (r) {
      result("Kicked " + user + ": " + r.closed + " connection(s) closed (4009).");
      renderFound([]);
      $("kick-user").hidden = true;
    }, function (e) { result(e.message, true); });
  });
  $("show-presence").addEventListener("click", function () {
    var lobby = $("act-lobby").value.trim();
    call("GET", "/api/lobbies/" + seg(lobby) + "/presence").then(function (p) {
      result(p.users.length === 0 ? "Nobody in " + lobby + "." : "In " + lobby + ": " + p.users.join(", "));
    }, function (e) { result(e.message, true); });
  });
  $("send-broadcast").addEventListener("click", function () {
    var lobby = $("act-lobby").value.trim();
    var text = $("act-message").value;
    var data;
    try { data = JSON.parse(text); } catch (_) { data = text; }
    call("POST", "/api/lobbies/" + seg(lobby) + "/broadcast", { data: data }).then(function (r) {
      result("Broadcast to " + lobby + ": delivered to " + r.delivered + " connection(s) on this node.");
    }, function (e) { result(e.message, true); });
  });

  // The last 15 minutes, from the server's own samples: drawn every 5 s.
  var HISTORY_MS = 5000;
  function drawHistory(h) {
    var draw = window.SwitchboardCharts.draw;
    var s = h.series || {};
    var t = h.t || [];
    var v = function (name) { return s[name] || t.map(function () { return null; }); };
    var chart = function (id, lines, unit) { draw($("chart-" + id), $("legend-" + id), t, lines, unit); };
    chart("connections", [
      { label: "connections", values: v("connections"), cls: "s0" },
      { label: "users", values: v("users"), cls: "s1" },
    ], "");
    chart("messages", [
      { label: "in", values: v("messages_in_per_s"), cls: "s1" },
      { label: "out", values: v("messages_out_per_s"), cls: "s0" },
    ], "/s");
    var churn = [
      { label: "connects", values: v("connects_per_s"), cls: "s0" },
      { label: "rejections", values: v("rejections_per_s"), cls: "s3" },
    ];
    Object.keys(h.closes_per_s || {}).sort().forEach(function (reason, i) {
      churn.push({ label: "closed: " + reason, values: h.closes_per_s[reason], cls: "s" + (1 + (i % 6)) });
    });
    chart("churn", churn, "/s");
    chart("slow", [
      { label: "dropped frames", values: v("dropped_per_s"), cls: "s2" },
      { label: "slow_consumer closes", values: v("slow_consumer_closes_per_s"), cls: "s3" },
      { label: "publishes shed", values: v("shed_publishes_per_s"), cls: "s4" },
      { label: "deliveries shed (caught up later)", values: v("shed_deliveries_per_s"), cls: "s5" },
      { label: "members behind", values: v("lagging_members"), cls: "s1" },
    ], "/s");
    chart("rtt", [
      { label: "p50", values: v("rtt_p50_ms"), cls: "s1" },
      { label: "p99", values: v("rtt_p99_ms"), cls: "s2" },
    ], "ms");
    $("figure-redis").hidden = !s.redis_up;
    $("figure-redis-rtt").hidden = !s.redis_rtt_ms;
    if (s.redis_up) {
      chart("redis", [
        { label: "redis up (1) / down (0)", values: s.redis_up, cls: "s1" },
        { label: "errors", values: v("redis_errors_per_s"), cls: "s3" },
      ], "");
    }
    if (s.redis_rtt_ms) {
      chart("redis-rtt", [{ label: "heartbeat round trip", values: s.redis_rtt_ms, cls: "s0" }], "ms");
    }
    renderNodes(h.nodes || [], h.node_id);
  }
  // Cluster mode: every node's charts, from the samples each node keeps in Redis.
  var chartedNode = "";  // "" = the node serving this page
  function renderNodes(nodes, current) {
    var select = $("history-node");
    $("history-node-label").hidden = nodes.length < 2;
    var have = Array.prototype.map.call(select.options, function (o) { return o.value; });
    if (have.join(",") !== nodes.join(",")) {
      select.textContent = "";
      nodes.forEach(function (n) {
        var o = document.createElement("option");
        o.value = n;
        o.textContent = n;
        select.appendChild(o);
      });
    }
    select.value = current;
  }
  $("history-node").addEventListener("change", function () {
    chartedNode = $("history-node").value;
    clearTimeout(historyTimer);
    pollHistory();
  });
  var historyTimer = null;
  function pollHistory() {
    var path = "/api/history" + (chartedNode ? "?node=" + seg(chartedNode) : "");
    getJson(path).then(drawHistory, function (e) {
      // A node gone for longer than the window: back to this node's own charts.
      if (e.status === 404 && chartedNode) chartedNode = "";
    }).then(function () {
      historyTimer = setTimeout(pollHistory, HISTORY_MS);
    });
  }

  $("key-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var key = $("api-key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    $("api-key").value = "";
    $("key-form").hidden = true;
    status("connecting", "loading…");
    if (timer !== null) clearTimeout(timer);
    if (!inFlight) poll();
  });

  poll();
  pollHistory();
})();
