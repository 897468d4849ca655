// The mail view (/): the list follows the event stream, search asks the API, a message opens in tabs.
//
// Plain JavaScript, no build step, nothing from elsewhere. Every text from a message reaches
// the page through textContent (or an attribute set with setAttribute), never as HTML; the
// HTML body is shown only in the sandboxed preview frame, from its own route.
"use strict";

(function () {
  const main = document.getElementById("mail");
  if (!main) {
    return;
  }
  const api = "/api/v1";
  const $ = (id) => document.getElementById(id);
  const list = $("message-list");
  const search = $("search");
  const searchError = $("search-error");
  const liveStatus = $("live-status");
  const view = $("message-view");
  const placeholder = $("message-placeholder");
  const RAW_SHOWN = 2 * 1024 * 1024; // characters of raw source shown; the rest is in the download

  const state = {
    query: main.dataset.query || "",
    domain: main.dataset.domain || "",
    latest: Number(main.dataset.latest || "0"),
    pageSize: Number(main.dataset.pageSize || "100"),
    shown: list.children.length,
    selected: null, // id of the selected list item
    open: null, // the message open in the view (its detail document)
    tab: "text",
    loading: null, // the list request under way
    again: false, // events came while it was under way
    rawFor: null,
  };

  // -- building elements (text only) -------------------------------------------------

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    return node;
  }

  function shownTime(iso) {
    return String(iso || "").replace("T", " ").replace("Z", "");
  }

  function sizeText(bytes) {
    if (bytes < 1024) {
      return bytes + " B";
    }
    if (bytes < 1024 * 1024) {
      return (bytes / 1024).toFixed(1) + " KiB";
    }
    return (bytes / 1024 / 1024).toFixed(1) + " MiB";
  }

  function listItem(message) {
    const item = element("li");
    item.dataset.id = message.id;
    item.dataset.domain = message.domain;
    item.setAttribute("role", "option");
    item.setAttribute("aria-selected", "false");
    item.tabIndex = -1;
    const line = element("span", "line");
    line.append(element("span", "from", message.from || message.envelope.from || "<>"));
    const time = element("time", "received", shownTime(message.received));
    time.setAttribute("datetime", message.received);
    line.append(" ", time);
    const meta = element("span", "meta");
    meta.append(element("span", "domain", message.domain));
    if (message.attachments) {
      const badge = element("span", "badge", message.attachments + " attached");
      badge.dataset.attachments = String(message.attachments);
      meta.append(" ", badge);
    }
    if (message.problem) {
      const problem = element("span", "badge problem", "problem");
      problem.title = message.problem;
      meta.append(" ", problem);
    }
    item.append(line, " ", element("span", "subject", message.subject || "(no subject)"), " ");
    item.append(element("span", "snippet", message.snippet), " ", meta);
    return item;
  }

  // -- the list -------------------------------------------------------------------------

  function items() {
    return Array.from(list.querySelectorAll("li[data-id]"));
  }

  function listUrl(limit, cursor) {
    const params = new URLSearchParams({ limit: String(limit) });
    if (state.query.trim()) {
      params.set("query", state.query);
    }
    if (state.domain) {
      params.set("domain", state.domain);
    }
    if (cursor) {
      params.set("cursor", cursor);
    }
    return api + "/messages?" + params.toString();
  }

  function showError(text) {
    searchError.textContent = text;
    searchError.hidden = !text;
    if (text) {
      search.setAttribute("aria-invalid", "true");
    } else {
      search.removeAttribute("aria-invalid");
    }
  }

  function setTotal(total) {
    $("message-total").textContent = String(total);
    $("message-total-noun").textContent = total === 1 ? "message" : "messages";
  }

  function setMore(cursor) {
    const more = $("load-more");
    more.dataset.cursor = cursor || "";
    more.hidden = !cursor;
  }

  // Fetch the list again as it is now (the first pages, as many as are shown), keeping the selection.
  async function refreshList() {
    if (state.loading) {
      state.again = true;
      return state.loading;
    }
    const limit = Math.min(1000, Math.max(state.pageSize, state.shown));
    state.loading = (async () => {
      try {
        const response = await fetch(listUrl(limit), { headers: { Accept: "application/json" } });
        const body = await response.json();
        if (!response.ok) {
          showError(body.error || "the search failed (" + response.status + ")");
          list.replaceChildren();
          state.shown = 0;
          setTotal(0);
          setMore(null);
          $("empty-list").hidden = true;
          return;
        }
        showError("");
        list.replaceChildren(...body.messages.map(listItem));
        state.shown = body.messages.length;
        setTotal(body.total);
        setMore(body.next_cursor);
        $("empty-list").hidden = body.messages.length > 0;
        markSelection();
      } catch (error) {
        showError("the inspector did not answer: " + error);
      } finally {
        state.loading = null;
      }
    })();
    await state.loading;
    if (state.again) {
      state.again = false;
      await refreshList();
    }
  }

  async function loadMore() {
    const cursor = $("load-more").dataset.cursor;
    if (!cursor) {
      return;
    }
    const response = await fetch(listUrl(state.pageSize, cursor));
    const body = await response.json();
    if (!response.ok) {
      showError(body.error || "cannot load more (" + response.status + ")");
      return;
    }
    const known = new Set(items().map((item) => item.dataset.id));
    list.append(...body.messages.filter((message) => !known.has(message.id)).map(listItem));
    state.shown = items().length;
    setMore(body.next_cursor);
    markSelection();
  }

  async function refreshDomains() {
    const response = await fetch(api + "/domains");
    if (!response.ok) {
      return;
    }
    const domains = await response.json();
    const all = element("li");
    all.dataset.domain = "";
    const allLink = element("a", "", "All domains");
    allLink.href = "/";
    const allCount = element("span", "count", domains.reduce((sum, found) => sum + found.count, 0));
    allCount.id = "all-count";
    all.append(allLink, " ", allCount);
    const rows = [all];
    for (const found of domains) {
      const item = element("li");
      item.dataset.domain = found.domain;
      item.dataset.count = String(found.count);
      const link = element("a", "", found.domain);
      link.href = "/?domain=" + encodeURIComponent(found.domain);
      link.title = "last message " + shownTime(found.last_received);
      item.append(link, " ", element("span", "count", found.count));
      rows.push(item);
    }
    $("domains").replaceChildren(...rows);
    markDomain();
  }

  function markDomain() {
    for (const item of $("domains").querySelectorAll("li[data-domain]")) {
      const current = item.dataset.domain === state.domain;
      item.classList.toggle("current", current);
      if (current) {
        item.setAttribute("aria-current", "true");
      } else {
        item.removeAttribute("aria-current");
      }
    }
  }

  function markSelection() {
    let found = false;
    for (const item of items()) {
      const selected = item.dataset.id === state.selected;
      found = found || selected;
      item.setAttribute("aria-selected", selected ? "true" : "false");
      item.classList.toggle("open", state.open !== null && item.dataset.id === state.open.id);
    }
    if (!found) {
      state.selected = null;
    }
  }

  function select(item) {
    if (!item) {
      return;
    }
    state.selected = item.dataset.id;
    markSelection();
    item.scrollIntoView({ block: "nearest" });
  }

  function move(step) {
    const all = items();
    if (all.length === 0) {
      return;
    }
    const at = all.findIndex((item) => item.dataset.id === state.selected);
    const next = at < 0 ? (step > 0 ? 0 : all.length - 1) : Math.min(all.length - 1, Math.max(0, at + step));
    select(all[next]);
  }

  function remember() {
    const params = new URLSearchParams();
    if (state.query.trim()) {
      params.set("query", state.query);
    }
    if (state.domain) {
      params.set("domain", state.domain);
    }
    if (state.open) {
      params.set("id", state.open.id);
    }
    const text = params.toString();
    history.replaceState(null, "", text ? "/?" + text : "/");
  }

  // -- the live stream ----------------------------------------------------------------------

  let pending = null;

  function changed() {
    // Events come in bursts: the list and the counts are asked for once per burst.
    if (pending !== null) {
      return;
    }
    pending = setTimeout(() => {
      pending = null;
      refreshList();
      refreshDomains();
    }, 150);
  }

  let stream = null;

  function live() {
    if (typeof EventSource === "undefined") {
      liveStatus.textContent = "not live";
      liveStatus.dataset.state = "off";
      return;
    }
    stream = new EventSource(api + "/events?since=" + encodeURIComponent(String(state.latest)));
    stream.addEventListener("open", () => {
      liveStatus.textContent = "live";
      liveStatus.dataset.state = "live";
    });
    stream.addEventListener("error", () => {
      liveStatus.textContent = "reconnecting";
      liveStatus.dataset.state = "reconnecting";
    });
    stream.addEventListener("message", (event) => {
      state.latest = Math.max(state.latest, Number(event.lastEventId) || 0);
      main.dataset.latest = String(state.latest);
      changed();
    });
  }

  // -- one message ------------------------------------------------------------------------

  function messageUrl(id, rest) {
    return api + "/messages/" + encodeURIComponent(id) + (rest || "");
  }

  async function openMessage(id) {
    const response = await fetch(messageUrl(id));
    const body = await response.json();
    view.hidden = false;
    placeholder.hidden = true;
    main.classList.add("reading");
    if (!response.ok) {
      state.open = { id: id, html: "", attachments: [] };
      fillError(body.error || "cannot read the message (" + response.status + ")");
      return;
    }
    state.open = body;
    state.selected = id;
    state.rawFor = null;
    fill(body);
    markSelection();
    remember();
    showTab(body.html ? "preview" : "text");
  }

  function fillError(text) {
    $("message-subject").textContent = "(cannot be shown)";
    for (const id of ["message-from", "message-to", "message-date", "message-envelope", "message-id", "message-text"]) {
      $(id).textContent = "";
    }
    const problem = $("message-problem");
    problem.textContent = text;
    problem.hidden = false;
    $("message-headers").tBodies[0].replaceChildren();
    $("attachments").replaceChildren();
    showTab("text");
  }

  function fill(message) {
    view.dataset.id = message.id;
    $("message-subject").textContent = message.subject || "(no subject)";
    $("message-from").textContent = message.from;
    $("message-to").textContent = [message.to, message.cc].filter(Boolean).join(", cc: ");
    $("message-date").textContent = message.date + " (received " + shownTime(message.received) + " UTC)";
    $("message-envelope").textContent =
      "<" + message.envelope.from + "> to " + message.envelope.to.map((to) => "<" + to + ">").join(", ");
    $("message-id").textContent = message.message_id;
    const problem = $("message-problem");
    problem.textContent = message.problem;
    problem.hidden = !message.problem;
    $("message-text").textContent = message.text;
    const rows = message.headers.map(([name, value]) => {
      const row = element("tr");
      row.append(element("th", "", name), element("td", "", value));
      row.firstChild.setAttribute("scope", "row");
      return row;
    });
    $("message-headers").tBodies[0].replaceChildren(...rows);
    $("raw-download").href = messageUrl(message.id, "/raw");
    $("message-raw").textContent = "";
    $("raw-note").textContent = "";
    const attachments = message.attachments.map((attachment) => {
      const item = element("li");
      const link = element("a", "", attachment.filename || "attachment " + attachment.index);
      link.href = messageUrl(message.id, "/attachments/" + attachment.index);
      link.setAttribute("download", "");
      link.dataset.sha256 = attachment.sha256;
      link.dataset.index = String(attachment.index);
      item.append(link, " ", element("span", "kind", attachment.content_type), " ");
      item.append(element("span", "size", sizeText(attachment.size)), " ");
      item.append(element("code", "sha256", "SHA-256 " + attachment.sha256));
      return item;
    });
    $("attachments").replaceChildren(...attachments);
    $("no-attachments").hidden = attachments.length > 0;
    $("attachment-count").textContent = attachments.length ? "(" + attachments.length + ")" : "";
    const frame = $("preview-frame");
    frame.removeAttribute("src");
    frame.hidden = !message.html;
    $("no-html").hidden = Boolean(message.html);
  }

  function closeMessage() {
    state.open = null;
    view.hidden = true;
    placeholder.hidden = false;
    main.classList.remove("reading");
    $("preview-frame").removeAttribute("src");
    markSelection();
    remember();
    list.focus();
  }

  function showTab(name) {
    state.tab = name;
    for (const button of document.querySelectorAll("#tabs [data-tab]")) {
      button.setAttribute("aria-selected", button.dataset.tab === name ? "true" : "false");
    }
    for (const panel of document.querySelectorAll("[data-panel]")) {
      panel.hidden = panel.dataset.panel !== name;
    }
    const message = state.open;
    if (!message) {
      return;
    }
    if (name === "preview" && message.html) {
      const frame = $("preview-frame");
      const source = messageUrl(message.id, "/html");
      if (frame.getAttribute("src") !== source) {
        frame.setAttribute("src", source);
      }
    }
    if (name === "raw" && state.rawFor !== message.id) {
      loadRaw(message.id);
    }
  }

  async function loadRaw(id) {
    state.rawFor = id;
    const raw = $("message-raw");
    raw.textContent = "loading…";
    const response = await fetch(messageUrl(id, "/raw"));
    if (state.rawFor !== id) {
      return;
    }
    if (!response.ok) {
      raw.textContent = "";
      $("raw-note").textContent = "cannot read the raw message (" + response.status + ")";
      return;
    }
    const text = await response.text();
    raw.textContent = text.length > RAW_SHOWN ? text.slice(0, RAW_SHOWN) : text;
    $("raw-note").textContent =
      text.length > RAW_SHOWN ? "(the first " + RAW_SHOWN + " characters of " + text.length + " are shown)" : "";
  }

  // -- wiring -----------------------------------------------------------------------------

  list.addEventListener("click", (event) => {
    const item = event.target.closest("li[data-id]");
    if (item) {
      select(item);
      openMessage(item.dataset.id);
    }
  });

  $("domains").addEventListener("click", (event) => {
    const item = event.target.closest("li[data-domain]");
    if (!item || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) {
      return;
    }
    event.preventDefault();
    state.domain = item.dataset.domain;
    $("search-domain").value = state.domain;
    markDomain();
    remember();
    refreshList();
  });

  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.query = search.value;
    remember();
    refreshList();
  });

  $("load-more").addEventListener("click", loadMore);
  $("close-message").addEventListener("click", closeMessage);

  for (const button of document.querySelectorAll("#tabs [data-tab]")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) {
      if (event.key === "Escape") {
        target.blur();
        list.focus();
      }
      return;
    }
    switch (event.key) {
      case "/":
        event.preventDefault();
        search.focus();
        search.select();
        break;
      case "j":
      case "ArrowDown":
        event.preventDefault();
        move(1);
        break;
      case "k":
      case "ArrowUp":
        event.preventDefault();
        move(-1);
        break;
      case "Enter":
        if (state.selected && !(target instanceof HTMLButtonElement) && !(target instanceof HTMLAnchorElement)) {
          event.preventDefault();
          openMessage(state.selected);
        }
        break;
      case "Escape":
        if (state.open) {
          closeMessage();
        }
        break;
      default:
        break;
    }
  });

  if (main.dataset.open) {
    openMessage(main.dataset.open);
  }
  markSelection();
  live();
  // A page left for another stays in the browser's back/forward cache with its stream open;
  // a browser allows a host six connections, so a few visits would leave the page none.
  window.addEventListener("pagehide", () => {
    if (stream !== null) {
      stream.close();
      stream = null;
    }
  });
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && stream === null) {
      live();
      changed();
    }
  });
})();
