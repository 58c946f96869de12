// Draws the usage table as a stacked bar chart (Chart.js). The table stays the source and stays on the
// page: bar heights come from the cells, and the tooltips show each cell's own text, so every amount a
// reader sees is the server's exact decimal string, never a float rendered back.
(function () {
  "use strict";
  var table = document.getElementById("spend-table");
  var canvas = table && document.getElementById(table.getAttribute("data-chart"));
  if (!table || !canvas || typeof Chart === "undefined") { return; }
  var groups = Array.prototype.slice.call(table.tHead.rows[0].cells, 1).map(function (c) { return c.textContent; });
  if (!groups.length) { canvas.parentNode.hidden = true; return; }
  var rows = Array.prototype.slice.call(table.tBodies[0].rows);
  var labels = rows.map(function (r) { return r.cells[0].textContent; });
  var palette = ["#0b4f8a", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490", "#a16207", "#4d4d4d"];
  var datasets = groups.map(function (name, i) {
    var texts = rows.map(function (r) { return r.cells[i + 1].textContent; });
    return { label: name, texts: texts, data: texts.map(Number), backgroundColor: palette[i % palette.length] };
  });
  new Chart(canvas, {
    type: "bar",
    data: { labels: labels, datasets: datasets },
    options: {
      responsive: true, maintainAspectRatio: false, animation: false,
      scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } },
      plugins: { tooltip: { callbacks: { label: function (item) {
        return item.dataset.label + ": " + item.dataset.texts[item.dataIndex];
      } } } }
    }
  });
}());
