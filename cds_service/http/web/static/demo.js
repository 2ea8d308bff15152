/* ivig-cds demo page: fire a CDS Hooks request from the browser and show the cards as an EHR would.
 *
 * No framework, no build step, no inline script (the page runs under a strict CSP).
 * Safety rule: text from a response is only ever put into the page with textContent or
 * setAttribute on an allow-listed attribute; card Markdown is rendered by the server
 * (POST /demo/api/render-markdown: raw HTML is never passed through) and then copied into
 * the page element by element from an inert DOMParser document, keeping only an allow-list
 * of tags and only http(s)/mailto link targets.  innerHTML is never used.
 */
(function () {
  "use strict";

  var main = document.getElementById("demo");
  if (!main) { return; }

  var INDICATOR_ORDER = { critical: 0, warning: 1, info: 2 };
  var MARKDOWN_TAGS = new Set(["P", "UL", "OL", "LI", "STRONG", "EM", "CODE", "PRE", "BLOCKQUOTE",
    "H1", "H2", "H3", "H4", "H5", "H6", "A", "BR", "HR", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD",
    "DEL", "S"]);
  var DROPPED_WITH_CONTENT = new Set(["SCRIPT", "STYLE", "TEMPLATE", "IFRAME", "OBJECT", "EMBED",
    "SVG", "MATH", "NOSCRIPT", "TITLE"]);

  function byId(id) { return document.getElementById(id); }

  /* el("div", {class: "x", "data-y": "z"}, child, "text", ...): attributes by setAttribute only. */
  function el(tag, attributes) {
    var node = document.createElement(tag);
    var names = Object.keys(attributes || {});
    for (var i = 0; i < names.length; i++) {
      var value = attributes[names[i]];
      if (value === undefined || value === null || value === false) { continue; }
      if (/^on/i.test(names[i])) { throw new Error("event handler attributes are not allowed"); }
      node.setAttribute(names[i], String(value));
    }
    for (var j = 2; j < arguments.length; j++) {
      var child = arguments[j];
      if (child === undefined || child === null) { continue; }
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function setStatus(text, state) {
    var status = byId("fire-status");
    status.textContent = text;
    status.dataset.status = state;
  }

  function uuid4() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") {
      return window.crypto.randomUUID();
    }
    // crypto.randomUUID needs a secure context; getRandomValues does not.
    var bytes = window.crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var hex = Array.prototype.map.call(bytes, function (b) { return b.toString(16).padStart(2, "0"); }).join("");
    return hex.slice(0, 8) + "-" + hex.slice(8, 12) + "-" + hex.slice(12, 16) + "-" +
      hex.slice(16, 20) + "-" + hex.slice(20);
  }

  function safeUrl(value) {
    if (typeof value !== "string" || !value) { return null; }
    try {
      var url = new URL(value, window.location.href);
      return ["http:", "https:", "mailto:"].indexOf(url.protocol) >= 0 ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function ownBase() {
    var discovery = new URL(main.dataset.discoveryPath, window.location.href);
    return discovery.href.replace(/\/cds-services\/?$/, "");
  }

  function targetBase() {
    var typed = byId("target-url").value.trim();
    return (typed || ownBase()).replace(/\/+$/, "").replace(/\/cds-services$/, "");
  }

  function prettyJson(text) {
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch (e) { return text; }
  }

  async function postJson(url, body) {
    return fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body)
    });
  }

  /* -- Markdown: rendered by the server, rebuilt here from an allow-list ---------------- */

  function copySafe(node, parent) {
    if (node.nodeType === Node.TEXT_NODE) {
      parent.append(document.createTextNode(node.textContent));
      return;
    }
    if (node.nodeType !== Node.ELEMENT_NODE || DROPPED_WITH_CONTENT.has(node.tagName)) { return; }
    var target = parent;
    if (MARKDOWN_TAGS.has(node.tagName)) {
      target = document.createElement(node.tagName.toLowerCase());
      if (node.tagName === "A") {
        var href = safeUrl(node.getAttribute("href"));
        if (href) {
          target.setAttribute("href", href);
          target.setAttribute("target", "_blank");
          target.setAttribute("rel", "noopener noreferrer");
        }
      }
      parent.append(target);
    }
    // Any other element is unwrapped: its text stays, the element (and its attributes) go.
    for (var i = 0; i < node.childNodes.length; i++) { copySafe(node.childNodes[i], target); }
  }

  async function renderMarkdown(markdown, container) {
    if (!markdown) { return; }
    try {
      var response = await postJson(main.dataset.renderPath, { markdown: markdown });
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      var html = (await response.json()).html;
      // A DOMParser document is inert: nothing in it runs or loads.
      var parsed = new DOMParser().parseFromString(String(html), "text/html");
      for (var i = 0; i < parsed.body.childNodes.length; i++) { copySafe(parsed.body.childNodes[i], container); }
    } catch (e) {
      container.append(el("pre", { "class": "detail-plain" }, markdown));
    }
  }

  /* -- Feedback ---------------------------------------------------------------------------- */

  async function sendFeedback(ctx, card, item, article) {
    var status = article.querySelector(".card-feedback-status");
    var payload = { feedback: [Object.assign({ card: card.uuid }, item,
      { outcomeTimestamp: new Date().toISOString() })] };
    var url = ctx.base + "/cds-services/" + encodeURIComponent(ctx.serviceId) + "/feedback";
    status.dataset.feedbackStatus = "sending";
    status.textContent = "sending " + item.outcome + " feedback…";
    var log = el("li", { "class": "feedback-entry", "data-outcome": item.outcome });
    var httpStatus = "network error";
    try {
      var response = await postJson(url, payload);
      httpStatus = "HTTP " + response.status;
      status.dataset.feedbackStatus = response.ok ? "sent" : "failed";
    } catch (e) {
      status.dataset.feedbackStatus = "failed";
    }
    article.dataset.feedback = item.outcome;
    status.textContent = item.outcome + " feedback " + (status.dataset.feedbackStatus === "sent" ? "sent" : "failed") +
      " (" + httpStatus + ")";
    log.append(el("code", {}, "POST " + url + " → " + httpStatus), el("pre", {}, JSON.stringify(payload, null, 2)));
    byId("feedback-log").append(log);
  }

  /* -- Cards ------------------------------------------------------------------------------- */

  function indicatorOf(card) {
    return Object.prototype.hasOwnProperty.call(INDICATOR_ORDER, card.indicator) ? card.indicator : "info";
  }

  function sortCards(cards) {
    return cards
      .map(function (card, index) { return { card: card, index: index }; })
      .sort(function (a, b) {
        return (INDICATOR_ORDER[indicatorOf(a.card)] - INDICATOR_ORDER[indicatorOf(b.card)]) || (a.index - b.index);
      })
      .map(function (item) { return item.card; });
  }

  function link(label, href) {
    var safe = safeUrl(href);
    if (!safe) { return el("span", {}, label); }
    return el("a", { href: safe, target: "_blank", rel: "noopener noreferrer" }, label);
  }

  function suggestionsElement(ctx, card, article) {
    var suggestions = Array.isArray(card.suggestions) ? card.suggestions : [];
    if (!suggestions.length) { return null; }
    var box = el("div", { "class": "card-suggestions" });
    suggestions.forEach(function (suggestion) {
      if (!suggestion || typeof suggestion !== "object") { return; }
      var canSend = Boolean(card.uuid && suggestion.uuid);
      var button = el("button", {
        type: "button",
        "class": "suggestion" + (suggestion.isRecommended ? " recommended" : ""),
        "data-suggestion-uuid": suggestion.uuid || "",
        title: canSend ? "Accept: sends accepted feedback" : "No uuid on the card or suggestion: no feedback is sent"
      }, String(suggestion.label || "(no label)"));
      button.addEventListener("click", function () {
        // selectionBehavior at-most-one: one accepted suggestion per card.
        box.querySelectorAll("button.suggestion").forEach(function (b) { b.disabled = true; });
        button.classList.add("chosen");
        if (canSend) {
          sendFeedback(ctx, card, { outcome: "accepted", acceptedSuggestions: [{ id: suggestion.uuid }] }, article);
        }
      });
      box.append(button);
    });
    return box;
  }

  function overrideElement(ctx, card, article) {
    if (!card.uuid) { return null; }  // like the sandbox: no uuid, no dismiss/override
    var reasons = Array.isArray(card.overrideReasons) ? card.overrideReasons : [];
    var details = el("details", { "class": "override" }, el("summary", { "class": "override-toggle" }, "Dismiss / override…"));
    var menu = el("div", { "class": "override-menu", role: "menu" });
    var comment = el("input", { type: "text", "class": "override-comment",
      placeholder: "Comment (optional, type it before choosing a reason)", "aria-label": "Override comment (optional)" });
    menu.append(comment);
    function choose(reason) {
      var item = { outcome: "overridden" };
      var overrideReason = {};
      if (reason) {
        overrideReason.reason = {};
        ["code", "system", "display"].forEach(function (key) {
          if (typeof reason[key] === "string") { overrideReason.reason[key] = reason[key]; }
        });
      }
      if (comment.value.trim()) { overrideReason.userComment = comment.value.trim(); }
      if (Object.keys(overrideReason).length) { item.overrideReason = overrideReason; }
      menu.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
      details.open = false;
      sendFeedback(ctx, card, item, article);
    }
    reasons.forEach(function (reason) {
      if (!reason || typeof reason !== "object") { return; }
      var button = el("button", { type: "button", "class": "override-reason", role: "menuitem",
        "data-code": reason.code || "", "data-system": reason.system || "" },
      String(reason.display || reason.code || "(no display)"));
      button.addEventListener("click", function () { choose(reason); });
      menu.append(button);
    });
    var dismiss = el("button", { type: "button", "class": "override-dismiss", role: "menuitem" }, "Dismiss without a reason");
    dismiss.addEventListener("click", function () { choose(null); });
    menu.append(dismiss);
    details.append(menu);
    return details;
  }

  async function cardElement(ctx, card) {
    var indicator = indicatorOf(card);
    var topic = card.source && card.source.topic ? card.source.topic : {};
    var article = el("article", {
      "class": "card indicator-" + indicator,
      "data-card-id": typeof topic.code === "string" ? topic.code : "",
      "data-indicator": indicator,
      "data-uuid": card.uuid || ""
    });
    article.append(el("header", { "class": "card-header" },
      el("span", { "class": "indicator-badge" }, indicator),
      el("h3", { "class": "card-summary" }, String(card.summary || ""))));

    var detail = el("div", { "class": "card-detail" });
    article.append(detail);
    await renderMarkdown(typeof card.detail === "string" ? card.detail : "", detail);

    var suggestions = suggestionsElement(ctx, card, article);
    if (suggestions) { article.append(suggestions); }

    var links = Array.isArray(card.links) ? card.links : [];
    if (links.length) {
      var list = el("ul", { "class": "card-links" });
      links.forEach(function (item) {
        if (!item || typeof item !== "object") { return; }
        var label = String(item.label || item.url || "link") + (item.type === "smart" ? " (SMART app)" : "");
        list.append(el("li", {}, link(label, item.url)));
      });
      article.append(list);
    }

    if (card.source && typeof card.source === "object") {
      var source = el("p", { "class": "card-source" }, "Source: ",
        link(String(card.source.label || card.source.url || "source"), card.source.url));
      if (typeof topic.code === "string") {
        source.append(" · card id ", el("code", { "class": "card-id" }, topic.code));
      }
      article.append(source);
    }

    var override = overrideElement(ctx, card, article);
    if (override) { article.append(override); }
    article.append(el("p", { "class": "card-feedback-status", role: "status", "data-feedback-status": "none" }));
    return article;
  }

  async function renderCards(ctx, cards) {
    var container = byId("cards");
    container.replaceChildren();
    var sorted = sortCards(cards.filter(function (c) { return c && typeof c === "object"; }));
    if (!sorted.length) {
      container.append(el("p", { id: "no-cards", "class": "muted" }, "No cards returned."));
    }
    var elements = await Promise.all(sorted.map(function (card) { return cardElement(ctx, card); }));
    elements.forEach(function (article) { container.append(article); });
  }

  /* -- Fire -------------------------------------------------------------------------------- */

  async function discover(base, hook) {
    var response;
    try {
      response = await fetch(base + "/cds-services", { headers: { "Accept": "application/json" } });
    } catch (e) {
      throw new Error("cannot reach " + base + "/cds-services (network error or CORS refused)");
    }
    if (response.status === 401) {
      throw new Error("GET " + base + "/cds-services answered 401: that service requires a signed client JWT, " +
        "which this page cannot send; use `cds-service fire --jwt-key ...`");
    }
    var body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok || !body || !Array.isArray(body.services)) {
      throw new Error("not a CDS service: GET " + base + "/cds-services answered HTTP " + response.status +
        (body && Array.isArray(body.services) ? "" : " without a services list"));
    }
    var matching = body.services.filter(function (s) { return s && s.hook === hook && typeof s.id === "string"; });
    if (!matching.length) { throw new Error(base + " offers no service for " + hook); }
    return matching.find(function (s) { return s.id === main.dataset.serviceId; }) || matching[0];
  }

  async function requestFor(base, service) {
    var textarea = byId("request-json");
    if (base !== ownBase()) {
      // Another service: prefetch exactly what its discovery asks for.
      var response = await postJson(main.dataset.requestPath, {
        fixture: main.dataset.fixture, hook: main.dataset.hook, prefetch: service.prefetch || {}
      });
      if (!response.ok) { throw new Error("could not build the request for its prefetch templates (HTTP " + response.status + ")"); }
      return response.json();
    }
    try {
      return JSON.parse(textarea.value);
    } catch (e) {
      throw new Error("the request JSON does not parse: " + e.message);
    }
  }

  async function fire() {
    var fireButton = byId("fire");
    fireButton.disabled = true;
    main.dataset.state = "firing";
    byId("cards").replaceChildren();
    byId("response-json").textContent = "";
    byId("response-status").textContent = "–";
    byId("latency").textContent = "–";
    try {
      var base = targetBase();
      setStatus("discovering " + base + "/cds-services …", "discovering");
      var service = await discover(base, main.dataset.hook);
      var body = await requestFor(base, service);
      body.hookInstance = uuid4();
      byId("request-json").value = JSON.stringify(body, null, 2);
      var url = base + "/cds-services/" + encodeURIComponent(service.id);
      byId("response-url").textContent = "POST " + url;
      setStatus("calling " + service.id + " …", "calling");
      var started = performance.now();
      var response, text;
      try {
        response = await postJson(url, body);
        text = await response.text();
      } catch (e) {
        throw new Error("cannot reach " + url + " (network error or CORS refused)");
      }
      var elapsed = performance.now() - started;
      byId("latency").textContent = elapsed.toFixed(0);
      byId("response-status").textContent = String(response.status);
      byId("response-json").textContent = prettyJson(text);
      var parsed;
      try { parsed = JSON.parse(text); } catch (e) { throw new Error("the response is not JSON"); }
      if (!response.ok) {
        throw new Error("HTTP " + response.status + (parsed && parsed.error ? ": " + parsed.error : ""));
      }
      if (!parsed || !Array.isArray(parsed.cards)) { throw new Error("the response has no cards array"); }
      await renderCards({ base: base, serviceId: service.id }, parsed.cards);
      setStatus(parsed.cards.length + " card(s) in " + elapsed.toFixed(0) + " ms", "done");
      main.dataset.state = "rendered";
    } catch (error) {
      setStatus(error.message, "error");
      main.dataset.state = "error";
    } finally {
      fireButton.disabled = false;
    }
  }

  /* -- Wiring ------------------------------------------------------------------------------ */

  ["fixture", "hook"].forEach(function (id) {
    var select = byId(id);
    if (select) {
      select.addEventListener("change", function () { byId("choose-form").submit(); });
    }
  });
  byId("fire").addEventListener("click", fire);
  main.dataset.ready = "true";
}());
