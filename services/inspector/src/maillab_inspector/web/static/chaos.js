// The fault-injection page (/chaos): the rules the server applies and their counts, refreshed
// every second from GET /api/v1/chaos, and a form that changes them with PUT and DELETE.
//
// Plain JavaScript, no build step, nothing from elsewhere. A rule is text a user wrote (a
// reply's text may hold <, > and &): it reaches the page through textContent only.
"use strict";

(function () {
  const main = document.getElementById("chaos");
  if (!main) {
    return;
  }
  const url = "/api/v1/chaos";
  const $ = (id) => document.getElementById(id);
  const text = $("chaos-text");
  const applyButton = $("chaos-apply");
  const clearButton = $("chaos-clear");
  const status = $("chaos-status");
  const applyError = $("chaos-apply-error");
  const unreadable = $("chaos-unreadable");
  const refreshMs = Number(main.dataset.refreshMs || "1000");

  function element(tag, className, content) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (content !== undefined && content !== null) {
      node.textContent = String(content);
    }
    return node;
  }

  function setText(id, value) {
    $(id).textContent = String(value === undefined || value === null ? "" : value);
  }

  function showProblem(node, message) {
    node.textContent = message || "";
    node.hidden = !message;
  }

  // -- the report -----------------------------------------------------------------------

  function ruleRow(rule) {
    const row = element("tr");
    const cell = element("td", "rule");
    cell.appendChild(element("code", "", rule.rule));
    row.appendChild(cell);
    row.appendChild(element("td", "count", rule.fired));
    row.appendChild(element("td", "count", rule.matched));
    return row;
  }

  function render(report) {
    const reported = $("chaos-reported");
    reported.dataset.reported = report.reported ? "true" : "false";
    reported.textContent = report.reported
      ? "reports the rules below"
      : "has not reported yet: it applies the rules when it runs";
    setText("chaos-source", report.source);
    setText("chaos-generation", report.generation);
    setText("chaos-updated", report.updated_at);
    setText("chaos-reserved", report.reserved_fired);
    showProblem($("chaos-problem"), report.problem);
    $("chaos-pending").hidden = !report.pending;
    setText("chaos-pending-text", report.pending ? report.pending.text : "");
    const rules = report.rules || [];
    $("chaos-rule-rows").replaceChildren(...rules.map(ruleRow));
    $("chaos-rules").hidden = rules.length === 0;
    $("chaos-none").hidden = rules.length !== 0;
  }

  async function errorOf(response) {
    try {
      const body = await response.json();
      return body && body.error ? body : { error: "HTTP " + response.status };
    } catch (_) {
      return { error: "HTTP " + response.status };
    }
  }

  async function refresh() {
    if (!document.hidden) {
      try {
        const response = await fetch(url, { headers: { Accept: "application/json" } });
        if (response.ok) {
          render(await response.json());
          showProblem(unreadable, "");
        } else {
          showProblem(unreadable, (await errorOf(response)).error);
        }
      } catch (_) {
        showProblem(unreadable, "the inspector does not answer");
      }
    }
    window.setTimeout(refresh, refreshMs);
  }

  // -- changing the rules -----------------------------------------------------------------

  function markInvalid(problem) {
    showProblem(applyError, problem ? problem.error : "");
    if (problem && typeof problem.position === "number") {
      text.setAttribute("aria-invalid", "true");
      text.focus();
      // The API counts characters (code points), the field UTF-16 units: an emoji is one, or two.
      const characters = Array.from(text.value);
      const start = characters.slice(0, problem.position).join("").length;
      text.setSelectionRange(start, start + (characters[problem.position] || "").length);
    } else {
      text.removeAttribute("aria-invalid");
    }
  }

  async function change(method, body) {
    applyButton.disabled = clearButton.disabled = true;
    status.textContent = method === "DELETE" ? "clearing..." : "applying...";
    markInvalid(null);
    try {
      const options = { method: method, headers: { Accept: "application/json" } };
      if (body !== undefined) {
        options.headers["Content-Type"] = "application/json";
        options.body = JSON.stringify(body);
      }
      const response = await fetch(url, options);
      if (response.status === 200 || response.status === 202) {
        render(await response.json());
        status.textContent =
          response.status === 200
            ? "applied"
            : "saved, but the server has not applied it yet: it will when it runs";
        return true;
      }
      status.textContent = "";
      markInvalid(await errorOf(response));
    } catch (_) {
      status.textContent = "";
      markInvalid({ error: "the inspector does not answer" });
    } finally {
      applyButton.disabled = clearButton.disabled = false;
    }
    return false;
  }

  $("chaos-form").addEventListener("submit", (event) => {
    event.preventDefault();
    change("PUT", { rules: text.value });
  });
  clearButton.addEventListener("click", async () => {
    if (await change("DELETE")) {
      text.value = "";
    }
  });
  text.addEventListener("input", () => {
    if (text.getAttribute("aria-invalid")) {
      markInvalid(null);
    }
  });

  window.setTimeout(refresh, refreshMs);
})();
