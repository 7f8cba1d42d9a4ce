// The page's only script: the prompt selector of the attention panels. It reads the JSON block
// #page-data, rewrites each head pattern's cells (<g id="attn-L-H">) and the token labels, and
// reports on <html>: data-status="ok" once ready, "error" with data-error on any script error.
(function () {
  "use strict";
  var root = document.documentElement;
  var DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  window.onerror = function (message) {
    root.setAttribute("data-status", "error");
    root.setAttribute("data-error", String(message));
  };
  var dataBlock = document.getElementById("page-data");
  var select = document.getElementById("prompt");
  if (dataBlock && select) {
    var data = JSON.parse(dataBlock.textContent);
    var SVG = "http://www.w3.org/2000/svg";
    // The example prompt's tokens label the axes of the mean.
    var meanTokens = [];
    document.querySelectorAll("#attn-query-labels text").forEach(function (t) {
      meanTokens.push(t.textContent);
    });
    // Each head's cells, one per causal (query, key) pair, row-major: the order of the data.
    Object.keys(data.heads).forEach(function (head) {
      var group = document.getElementById("attn-" + head);
      for (var q = 0; q < data.length; q++) {
        for (var k = 0; k <= q; k++) {
          var cell = document.createElementNS(SVG, "rect");
          cell.setAttribute("x", k);
          cell.setAttribute("y", q);
          cell.setAttribute("width", 1);
          cell.setAttribute("height", 1);
          group.appendChild(cell);
        }
      }
    });
    var show = function (choice) {
      // "mean", or a dataset prompt index among those the selector offers.
      var i = 0;
      if (choice !== "mean") {
        var n = parseInt(choice, 10);
        i = -1;
        data.prompts.forEach(function (p, j) { if (p.index === n) { i = j + 1; } });
        if (i < 0) { throw new Error("prompt " + choice + " is not offered by the selector"); }
      }
      Object.keys(data.heads).forEach(function (head) {
        var group = document.getElementById("attn-" + head);
        var packed = data.heads[head][i];
        var cells = group.children;
        for (var c = 0; c < cells.length; c++) {
          // Two base-64 digits per cell, high first (patterns::packed).
          var v = 64 * DIGITS.indexOf(packed[2 * c]) + DIGITS.indexOf(packed[2 * c + 1]);
          cells[c].setAttribute("fill-opacity", Math.floor(v / 1000) + "." + String(v % 1000).padStart(3, "0"));
        }
      });
      var tokens = i === 0 ? meanTokens : data.prompts[i - 1].tokens;
      document.querySelectorAll("text.tok").forEach(function (t) {
        var p = parseInt(t.getAttribute("data-i"), 10);
        if (p < tokens.length) { t.textContent = tokens[p]; }
      });
      select.value = i === 0 ? "mean" : String(data.prompts[i - 1].index);
      document.getElementById("prompt-shown").textContent = select.options[select.selectedIndex].textContent;
      root.setAttribute("data-prompt", i === 0 ? "mean" : String(data.prompts[i - 1].index));
    };
    select.addEventListener("change", function () { show(select.value); });
    // Hovering a cell names the head, both tokens and the weight shown.
    var tip = document.createElement("div");
    tip.className = "tip";
    document.body.appendChild(tip);
    document.querySelectorAll("svg.apanel").forEach(function (panel) {
      var grid = panel.getAttribute("data-grid").split(" ").map(Number);
      var head = panel.getAttribute("data-head");
      panel.addEventListener("mousemove", function (event) {
        var box = panel.getBoundingClientRect();
        var k = Math.floor((event.clientX - box.left - grid[0]) / grid[2]);
        var q = Math.floor((event.clientY - box.top - grid[1]) / grid[2]);
        var labels = document.querySelectorAll("#attn-query-labels text");
        if (q < 0 || k < 0 || q >= data.length || k > q) { tip.style.display = "none"; return; }
        var cell = document.getElementById("attn-" + head.replace(".", "-")).children[q * (q + 1) / 2 + k];
        tip.textContent = "head " + head + ": query " + q + " " + labels[q].textContent +
          " ← key " + k + " " + labels[k].textContent + ": " + cell.getAttribute("fill-opacity");
        tip.style.left = (event.pageX + 12) + "px";
        tip.style.top = (event.pageY + 12) + "px";
        tip.style.display = "block";
      });
      panel.addEventListener("mouseleave", function () { tip.style.display = "none"; });
    });
    var match = /(?:^#|&)prompt=([^&]+)/.exec(window.location.hash);
    show(match ? decodeURIComponent(match[1]) : "mean");
  }
  // Milliseconds from navigation start until the page was ready (parse, layout, this script).
  root.setAttribute("data-ready-ms", String(Math.round(performance.now())));
  root.setAttribute("data-status", "ok");
})();
