// The demo chat: a lobby chat built on the Switchboard client (the global `Switchboard`).
// Pick a name (in dev mode the token is the user id) and a lobby; messages are broadcasts
// ({text}); the member list comes from `presence` plus `member_joined` / `member_left`.
// With ?protocol=2 the page speaks protocol v2: one connection in many lobbies, listed as rooms
// (join more with the form, pick one to read and write in it, x leaves it).
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var client = null;
  var me = null;
  var members = new Set();
  var retryTimer = null;
  var wasOpen = true; // so that a first refusal (lobby full) is logged too

  var params = new URLSearchParams(location.search);
  var v2 = params.get("protocol") === "2";
  // v2: lobby -> { room (null until joined), members: Set, unread: number }; the room shown.
  var rooms = new Map();
  var current = null;
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

  // `lobby` (v2): the line belongs to that room and shows only while it is the current one.
  function addLine(kind, from, text, lobby) {
    var li = document.createElement("li");
    li.className = "msg " + kind;
    if (lobby) {
      li.dataset.lobby = lobby;
      li.hidden = lobby !== current;
    }
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
     v2 ? ["protocol", "v2, up to " + welcome.max_lobbies + " lobbies"]
       : ["presence events", welcome.presence_events ? "on" : "off"]].forEach(function (row) {
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
    var lobby = client ? client.lobby || current || "" : "";
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
    wireCommon(c);
    c.on("welcome", function (w) {
      addLine("system", undefined, "connected to " + w.lobby + " as " + w.user_id);
      c.presence().then(function (users) {
        members = new Set(users);
        renderMembers();
      }, function () { /* the connection dropped meanwhile */ });
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
    setState("connecting", "connecting…");
    setConnectedUi(false);
    c.connect();
  }

  // The handlers of both protocols: state, welcome, errors, direct messages, disconnects.
  function wireCommon(c) {
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
      updateQueued();
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
  }

  // ---- protocol v2: one connection, a room per lobby ----

  function connectV2(name) {
    leave();
    me = name;
    wasOpen = true;
    sessionStorage.setItem("switchboard.demo.name", name);
    $("leave").hidden = false;
    $("name").disabled = true;
    notice(null, "");
    var c = new Switchboard.SwitchboardClient({ protocol: 2, getToken: function () { return name; } });
    client = c;
    wireCommon(c);
    c.on("welcome", function (w) { addLine("system", undefined, "connected as " + w.user_id + " (protocol v2)"); });
    // Rooms show their state: rejoining while the connection is down, joined again after.
    c.on("state", function () { renderRooms(); });
    c.on("joined", function (j) {
      // The backend may join this connection to a lobby itself: it gets a room here too.
      var room = c.room(j.lobby);
      if (room && !rooms.has(j.lobby)) {
        var entry = { room: room, members: new Set(), unread: 0 };
        rooms.set(j.lobby, entry);
        watchRoom(room, entry);
        addLine("system", undefined, "the server added you to " + j.lobby);
        refreshMembers(room, entry);
      }
      renderRooms();
    });
    setState("connecting", "connecting…");
    setConnectedUi(false);
    c.connect();
  }

  function joinV2(name, lobby) {
    if (!client) connectV2(name);
    sessionStorage.setItem("switchboard.demo.lobby", lobby);
    if (rooms.has(lobby)) { select(lobby); return; }
    var entry = { room: null, members: new Set(), unread: 0 };
    rooms.set(lobby, entry);
    select(lobby);
    addLine("system", undefined, "joining " + lobby + "…", lobby);
    var c = client;
    c.join(lobby).then(function (room) {
      if (client !== c || rooms.get(lobby) !== entry) return;
      entry.room = room;
      watchRoom(room, entry);
      addLine("system", undefined, "joined " + lobby, lobby);
      refreshMembers(room, entry);
      renderRooms();
    }, function (e) {
      if (client !== c || rooms.get(lobby) !== entry) return;
      rooms.delete(lobby);
      addLine("error", undefined, "could not join " + lobby + ": " + e.code);
      notice("error", "Could not join \u201c" + lobby + "\u201d (" + e.code + ").");
      select(rooms.size ? rooms.keys().next().value : null);
    });
  }

  function refreshMembers(room, entry) {
    room.presence().then(function (users) {
      entry.members.clear();
      users.forEach(function (u) { entry.members.add(u); });
      if (current === room.lobby) renderMembers();
    }, function () { /* the connection dropped meanwhile: the rejoin asks again */ });
  }

  function watchRoom(room, entry) {
    var lobby = room.lobby;
    room.on("message", function (m) {
      addLine("chat", m.from, text(m.data), lobby);
      if (lobby !== current) { entry.unread += 1; renderRooms(); }
    });
    room.on("member_joined", function (m) {
      entry.members.add(m.user_id);
      if (lobby === current) renderMembers();
      addLine("system", undefined, m.user_id + " joined", lobby);
    });
    room.on("member_left", function (m) {
      entry.members.delete(m.user_id);
      if (lobby === current) renderMembers();
      addLine("system", undefined, m.user_id + " left", lobby);
    });
    room.on("joined", function (j) { if (j.rejoin) refreshMembers(room, entry); });
    room.on("recovered", function (r) {
      addLine("system", undefined, r.ok
        ? "rejoined: no message was missed"
        : "rejoined: messages sent meanwhile could not be recovered (history lost)", lobby);
    });
    room.on("left", function (e) {
      if (rooms.get(lobby) !== entry) return;
      rooms.delete(lobby);
      if (e.reason !== "closed") {
        addLine("system", undefined, "you left " + lobby + (e.reason === "left" ? "" : " (" + e.reason + (e.code ? " " + e.code : "") + ")"));
      }
      if (current === lobby) select(rooms.size ? rooms.keys().next().value : null);
      else renderRooms();
    });
  }

  function select(lobby) {
    current = lobby;
    var entry = lobby ? rooms.get(lobby) : null;
    if (entry) entry.unread = 0;
    members = entry ? entry.members : new Set();
    $("lobby-title").textContent = lobby ? "in " + lobby : "";
    Array.prototype.forEach.call($("messages").children, function (li) {
      if (li.dataset.lobby) li.hidden = li.dataset.lobby !== lobby;
    });
    renderMembers();
    renderRooms();
  }

  function renderRooms() {
    var ul = $("rooms");
    ul.hidden = !v2 || rooms.size === 0;
    ul.textContent = "";
    rooms.forEach(function (entry, lobby) {
      var li = document.createElement("li");
      li.dataset.lobby = lobby;
      li.dataset.state = entry.room ? entry.room.state : "joining";
      if (lobby === current) li.classList.add("current");
      var pick = document.createElement("button");
      pick.type = "button";
      pick.className = "pick";
      pick.textContent = lobby;
      pick.addEventListener("click", function () { select(lobby); });
      li.appendChild(pick);
      if (entry.unread > 0) {
        var badge = document.createElement("span");
        badge.className = "count unread";
        badge.textContent = String(entry.unread);
        li.appendChild(badge);
      }
      var out = document.createElement("button");
      out.type = "button";
      out.className = "leave-room";
      out.title = "leave " + lobby;
      out.setAttribute("aria-label", "leave " + lobby);
      out.textContent = "\u00d7";
      out.addEventListener("click", function () {
        if (entry.room) entry.room.leave().catch(function (e) { addLine("error", undefined, "leave " + lobby + ": " + e.code); });
        else { rooms.delete(lobby); if (current === lobby) select(rooms.size ? rooms.keys().next().value : null); else renderRooms(); }
      });
      li.appendChild(out);
      ul.appendChild(li);
    });
  }

  function leave() {
    if (retryTimer) { clearInterval(retryTimer); retryTimer = null; }
    if (client) client.close();
    client = null;
    rooms.clear();
    current = null;
    renderRooms();
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
    if (name && lobby) (v2 ? joinV2 : join)(name, lobby);
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
    if (v2) {
      var entry = current ? rooms.get(current) : null;
      if (!entry || !entry.room) return;
      input.value = "";
      var lobby = current;
      entry.room.broadcast({ text: value }).catch(function (e) {
        addLine("error", undefined, "not sent (" + e.code + "): " + value, lobby);
      });
      updateQueued();
      return;
    }
    if (client.broadcast({ text: value })) input.value = "";
    updateQueued();
  });

  if (v2) {
    $("join").textContent = "Join lobby";
    $("leave").textContent = "Disconnect";
  }
  if (params.get("join") === "1" && $("name").value && $("lobby").value) {
    (v2 ? joinV2 : join)($("name").value.trim(), $("lobby").value.trim());
  }
  // For tests and the curious: the live client.
  window.switchboardDemo = { get client() { return client; }, get current() { return current; } };
})();
