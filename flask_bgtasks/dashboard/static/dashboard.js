// Flask-BGTasks dashboard: keeps the page live by reading tasks.json every
// second with the page's own filters, and sends cancel and retry requests.
// Values from the server are set as text, never as HTML.
"use strict";

(function () {
  const body = document.body;
  const jsonUrl = body.dataset.json;
  const pollMs = Number(body.dataset.poll) || 1000;
  const tbody = document.querySelector("#tasks tbody");
  const notice = document.getElementById("notice");
  const headers = { "X-Requested-With": "fetch", Accept: "application/json" };
  window.bgtasksPolls = 0;

  function el(tag, props, children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children || []) {
      node.append(child);
    }
    return node;
  }

  function code(text, href) {
    return el("a", { href: href }, [el("code", { textContent: text })]);
  }

  function button(action, url, label) {
    const b = el("button", { type: "button", textContent: label });
    b.dataset.action = action;
    b.dataset.url = url;
    return b;
  }

  function progressCell(task) {
    const cell = el("td", { className: "progress" });
    if (task.percent !== null || task.status === "running") {
      const bar = el("progress", { max: 100 });
      if (task.percent !== null) {
        bar.value = task.percent;
        bar.textContent = task.percent + "%";
      }
      cell.append(bar, " ");
    }
    const message = (task.progress && task.progress.message) || "";
    cell.append(el("span", { className: "message", textContent: message }));
    return cell;
  }

  function row(task) {
    const tr = el("tr", { className: "status-" + task.status });
    tr.dataset.id = task.id;
    const actions = el("td", { className: "actions" });
    if (task.can_cancel) actions.append(button("cancel", task.links.cancel, "Cancel"));
    if (task.can_retry) actions.append(button("retry", task.links.retry, "Retry"));
    tr.append(
      el("td", { className: "id" }, [code(task.id, task.links.self)]),
      el("td", { className: "name", textContent: task.name }),
      el("td", { className: "pool", textContent: task.pool }),
      el("td", { className: "status", textContent: task.status }),
      progressCell(task),
      el("td", { className: "duration", textContent: task.duration_text }),
      el("td", { className: "retry-of" }, task.retry_of ? [code(task.retry_of, task.links.retry_of)] : []),
      actions,
    );
    return tr;
  }

  function showPools(stats) {
    const rows = Object.values(stats.pools).map((pool) => {
      const workers = (pool.workers === null ? "?" : String(pool.workers)) +
        (pool.max_workers === null ? "" : " / " + pool.max_workers);
      const tr = el("tr", {}, [
        el("td", { textContent: pool.name }),
        el("td", { className: "queued", textContent: String(pool.queued) }),
        el("td", { className: "running", textContent: String(pool.running) }),
        el("td", { className: "workers", textContent: workers }),
      ]);
      tr.dataset.pool = pool.name;
      return tr;
    });
    document.querySelector("#pools tbody").replaceChildren(...rows);
    const counts = Object.entries(stats.by_status).map(([status, count]) =>
      el("span", { className: "status-" + status }, [status + " ", el("b", { textContent: String(count) }), " "]));
    counts.push(el("span", {}, ["finished in the last minute ", el("b", { textContent: String(stats.finished_last_minute) })]));
    document.getElementById("counts").replaceChildren(...counts);
  }

  function show(data) {
    const rows = data.tasks.map(row);
    if (rows.length === 0) {
      rows.push(el("tr", { className: "empty" }, [el("td", { colSpan: 8, textContent: "No tasks." })]));
    }
    tbody.replaceChildren(...rows);
    showPools(data.stats);
  }

  async function poll() {
    try {
      const response = await fetch(jsonUrl + window.location.search, { headers: headers, cache: "no-store" });
      if (response.ok) {
        show(await response.json());
        window.bgtasksPolls += 1;
      }
    } catch (error) {
      // The server is away for a moment: try again at the next tick.
    }
    setTimeout(poll, pollMs);
  }

  function say(parts) {
    notice.replaceChildren(...parts);
  }

  async function act(action, url) {
    const response = await fetch(url, { method: "POST", headers: headers });
    let data = {};
    try {
      data = await response.json();
    } catch (error) {
      data = {};
    }
    if (!response.ok) {
      say([(data.error && data.error.message) || "The request failed (" + response.status + ")."]);
      return;
    }
    if (action === "retry") {
      say(["Running again as ", code(data.id, data.task ? data.task.links.self : "?id=" + data.id), "."]);
    } else {
      say(["Task ", el("code", { textContent: data.task.id }), " is " + data.task.status + "."]);
    }
  }

  tbody.addEventListener("click", (event) => {
    const target = event.target.closest("button[data-action]");
    if (target) {
      target.disabled = true;
      act(target.dataset.action, target.dataset.url);
    }
  });

  setTimeout(poll, pollMs);
})();
