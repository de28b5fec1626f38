// The demo chat: a lobby chat built on the Switchboard client (the global `Switchboard`).
// Pick a name (in dev mode the token is the user id) and a lobby; messages are broadcasts
// ({text}); the member list comes from `presence` plus `member_joined` / `member_left`.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var client = null;
  var me = null;
  var members = new Set();
  var retryTimer = null;
  var wasOpen = true; // so that a first refusal (lobby full) is logged too

  var params = new URLSearchParams(location.search);
  $("name").value = params.get("name") || sessionStorage.getItem("switchboard.demo.name") || "";
  $("lobby").value = params.get("lobby") || sessionStorage.getItem("switchboard.demo.lobby") || "lobby-1";

  function setState(state, text) {
    var el = $("state");
    el.dataset.state = state;
    el.textContent = text || state;
  }

  function notice(kind, text) {
    var el = $("notice");
    if (!text) { el.hidden = true; el.textContent = ""; delete el.dataset.kind; return; }
    el.hidden = false;
    el.dataset.kind = kind;
    el.textContent = text;
  }

  function time() {
    var d = new Date();
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function addLine(kind, from, text) {
    var li = document.createElement("li");
    li.className = "msg " + kind;
    if (from === me) li.classList.add("mine");
    var t = document.createElement("time");
    t.textContent = time();
    li.appendChild(t);
    if (from !== undefined) {
      var f = document.createElement("span");
      f.className = "from";
      f.textContent = from === null ? "backend" : from;
      li.appendChild(f);
    }
    var body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    li.appendChild(body);
    var list = $("messages");
    list.appendChild(li);
    while (list.children.length > 500) list.removeChild(list.firstChild);
    list.scrollTop = list.scrollHeight;
  }

  function renderMembers() {
    var ul = $("members");
    ul.textContent = "";
    Array.from(members).sort().forEach(function (user) {
      var li = document.createElement("li");
      li.dataset.user = user;
      li.textContent = user;
      if (user === me) {
        var you = document.createElement("span");
        you.className = "you";
        you.textContent = " (you)";
        li.appendChild(you);
      }
      ul.appendChild(li);
    });
    $("member-count").textContent = String(members.size);
  }

  function renderInfo(welcome) {
    var dl = $("conn-info");
    dl.textContent = "";
    if (!welcome) return;
    [["connection", welcome.connection_id], ["user", welcome.user_id],
     ["transport", client ? client.transport : ""],
     ["ping interval", (welcome.ping_interval_ms / 1000) + " s"],
     ["presence events", welcome.presence_events ? "on" : "off"]].forEach(function (row) {
      var dt = document.createElement("dt"); dt.textContent = row[0];
      var dd = document.createElement("dd"); dd.textContent = row[1];
      dl.appendChild(dt); dl.appendChild(dd);
    });
  }

  function text(data) {
    if (data && typeof data === "object" && typeof data.text === "string") return data.text;
    if (typeof data === "string") return data;
    return JSON.stringify(data);
  }

  function setConnectedUi(open) {
    $("text").disabled = !client;
    $("send").disabled = !client;
    document.body.classList.toggle("offline", !open);
  }

  function updateQueued() {
    var n = client ? client.queued : 0;
    $("queued").hidden = n === 0;
    $("queued").textContent = n + " message(s) waiting for the connection";
  }

  function countdown(ms, render) {
    if (retryTimer) clearInterval(retryTimer);
    var until = Date.now() + ms;
    function tick() {
      var left = Math.max(0, until - Date.now());
      render((left / 1000).toFixed(left < 10000 ? 1 : 0));
      if (left === 0) { clearInterval(retryTimer); retryTimer = null; }
    }
    tick();
    retryTimer = setInterval(tick, 200);
  }

  function describeClose(d) {
    var lobby = client ? client.lobby : "";
    switch (d.reason) {
      case "lobby_full": return "The lobby \u201c" + lobby + "\u201d is full (4002 lobby_full).";
      case "server_full": return "The server is full (4002 server_full).";
      case "user_limit": return "Too many connections for this name (4002 user_limit).";
      case "ip_limit": return "Too many connections from this address (4002 ip_limit).";
      case "unauthorized": return "Refused: the token was not accepted (4001 unauthorized).";
      case "replaced": return "This name connected from another tab or device (4003 replaced).";
      case "kicked": return "You were disconnected by the server's backend (4009 kicked).";
      case "token_expired": return "Your token expired (4010); reconnecting with a fresh one.";
      case "server_shutdown": return "The server is shutting down (1001).";
      case "stale": return "The server found this connection silent (4004 stale).";
      case "slow_consumer": return "This tab could not keep up with the messages (4008 slow_consumer).";
      case "rate_limited": return "Too many messages (4008 rate_limited).";
      case "liveness_timeout": return "No news from the server for two ping intervals.";
      default: return "Connection lost (" + d.code + (d.reason ? " " + d.reason : "") + ").";
    }
  }

  function join(name, lobby) {
    leave();
    me = name;
    wasOpen = true;
    sessionStorage.setItem("switchboard.demo.name", name);
    sessionStorage.setItem("switchboard.demo.lobby", lobby);
    $("lobby-title").textContent = "in " + lobby;
    $("join").hidden = true;
    $("leave").hidden = false;
    $("name").disabled = true;
    $("lobby").disabled = true;
    notice(null, "");
    var c = new Switchboard.SwitchboardClient({
      lobby: lobby,
      getToken: function () { return name; },
      // ?transport=sse forces Server-Sent Events (default: WebSocket, SSE as a fallback).
      transport: params.get("transport") || undefined,
    });
    client = c;
    c.on("state", function (s) {
      if (s.state === "open") setState("open", "connected");
      else if (s.state === "connecting") setState("connecting", "connecting…");
      else if (s.state === "reconnecting") { if ($("state").dataset.state !== "reconnecting") setState("reconnecting", "reconnecting…"); }
      else if (s.state === "closed") setState("closed", "disconnected");
      setConnectedUi(s.state === "open");
      updateQueued();
    });
    c.on("welcome", function (w) {
      wasOpen = true;
      if (retryTimer) { clearInterval(retryTimer); retryTimer = null; }
      notice(null, "");
      renderInfo(w);
      addLine("system", undefined, "connected to " + w.lobby + " as " + w.user_id);
      c.presence().then(function (users) {
        members = new Set(users);
        renderMembers();
      }, function () { /* the connection dropped meanwhile */ });
      updateQueued();
    });
    c.on("presence", function (p) { members = new Set(p.users); renderMembers(); });
    c.on("member_joined", function (m) {
      members.add(m.user_id); renderMembers();
      addLine("system", undefined, m.user_id + " joined");
    });
    c.on("member_left", function (m) {
      members.delete(m.user_id); renderMembers();
      addLine("system", undefined, m.user_id + " left");
    });
    c.on("message", function (m) { addLine("chat", m.from, text(m.data)); });
    // After a reconnect: were the messages sent meanwhile all delivered (above)?
    c.on("recovered", function (r) {
      addLine("system", undefined, r.ok
        ? "reconnected: no message was missed"
        : "reconnected: messages sent meanwhile could not be recovered (history lost)");
    });
    c.on("direct", function (m) { addLine("direct", m.from, "(direct) " + text(m.data)); });
    c.on("error", function (e) { addLine("error", undefined, "error " + e.code + ": " + e.message); });
    c.on("dropped", function () { updateQueued(); });
    c.on("disconnect", function (d) {
      if (d.reason === "client_closed") return;
      renderInfo(null);
      var what = describeClose(d);
      var kind = d.code === 4002 ? "full" : d.willReconnect ? "warn" : "error";
      if (d.willReconnect) {
        countdown(d.retryInMs, function (s) {
          var zero = Number(s) === 0;
          notice(kind, what + (zero ? " Reconnecting\u2026" : " Retrying in " + s + " s\u2026"));
          setState("reconnecting", zero ? "reconnecting\u2026" : "reconnecting in " + s + " s");
        });
      } else {
        notice(kind, what + " Not reconnecting.");
      }
      // One line per lost connection, not one per failed retry.
      if (wasOpen || !d.willReconnect) addLine("system", undefined, "disconnected: " + d.code + (d.reason ? " " + d.reason : ""));
      wasOpen = false;
    });
    setState("connecting", "connecting…");
    setConnectedUi(false);
    c.connect();
  }

  function leave() {
    if (retryTimer) { clearInterval(retryTimer); retryTimer = null; }
    if (client) client.close();
    client = null;
    members = new Set();
    renderMembers();
    renderInfo(null);
    $("join").hidden = false;
    $("leave").hidden = true;
    $("name").disabled = false;
    $("lobby").disabled = false;
    setConnectedUi(false);
    setState("idle", "not connected");
  }

  $("join-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var name = $("name").value.trim();
    var lobby = $("lobby").value.trim();
    if (name && lobby) join(name, lobby);
  });
  $("leave").addEventListener("click", function () {
    leave();
    addLine("system", undefined, "you left");
  });
  $("send-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var input = $("text");
    var value = input.value.trim();
    if (!value || !client) return;
    if (client.broadcast({ text: value })) input.value = "";
    updateQueued();
  });

  if (params.get("join") === "1" && $("name").value && $("lobby").value) {
    join($("name").value.trim(), $("lobby").value.trim());
  }
  // For tests and the curious: the live client.
  window.switchboardDemo = { get client() { return client; } };
})();
