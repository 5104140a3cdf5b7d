// Charts of the dashboard (uPlot), kept up to date by polling their JSON: no reload, no build step.
(function () {
  "use strict";

  function major(minor, exponent) { return minor / Math.pow(10, exponent); }  // display only: amounts stay exact server-side

  function burnDownSeries(data) {
    var exponent = data.exponent || 0;
    return {
      data: [data.x, data.credits_left.map(function (v) { return major(v, exponent); }),
             data.usage.map(function (v) { return major(v, exponent); })],
      series: [{}, {label: "Credits left", stroke: "#1a7f37", width: 2}, {label: "Usage cost", stroke: "#b42318", width: 2}],
    };
  }

  function usageSeries(data) {
    return {data: [data.x, data.y], series: [{}, {label: "Usage", stroke: "#0b5fff", width: 2, fill: "rgba(11,95,255,0.12)"}],
            summary: "Total in this window: " + data.total};
  }

  function start(figure) {
    var canvas = figure.querySelector(".chart-canvas");
    var summary = figure.querySelector("[data-chart-summary]");
    var kind = figure.getAttribute("data-chart");
    var every = parseInt(figure.getAttribute("data-every-ms") || "3000", 10);
    var plot = null;
    var shape = kind === "burn-down" ? burnDownSeries : usageSeries;

    function refresh() {
      fetch(figure.getAttribute("data-url"), {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (response) { return response.json().then(function (body) { return [response.ok, body]; }); })
        .then(function (pair) {
          var body = pair[1];
          if (!pair[0]) { summary.textContent = body.error || "Could not load the chart."; return; }
          var shaped = shape(body);
          summary.textContent = shaped.summary || body.summary || "";
          if (!body.x || body.x.length === 0) { return; }
          var width = Math.max(260, canvas.clientWidth);
          if (plot === null) {
            plot = new uPlot({width: width, height: 220, series: shaped.series, scales: {x: {time: true}},
                              axes: [{}, {size: 60}]}, shaped.data, canvas);
          } else {
            plot.setData(shaped.data);
          }
        })
        .catch(function () { summary.textContent = "Could not load the chart."; });
    }

    refresh();
    setInterval(function () { if (!document.hidden) { refresh(); } }, every);
    window.addEventListener("resize", function () {
      if (plot !== null) { plot.setSize({width: Math.max(260, canvas.clientWidth), height: 220}); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-chart]").forEach(start);
  });
})();
