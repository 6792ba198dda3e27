// The usage dashboard's charts (admin/logs/usage.html), drawn with Chart.js from the
// "usage-charts" JSON; a click on a bar, point or slice opens its request-log list.
"use strict";
(function () {
  const source = document.getElementById("usage-charts");
  if (!source || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  const styles = getComputedStyle(document.documentElement);
  const text = styles.getPropertyValue("--body-fg").trim() || "#333";
  const grid = styles.getPropertyValue("--hairline-color").trim() || "#e8e8e8";
  const colours = ["#417690", "#e0a030", "#79aec8", "#c0504d", "#4f9a56", "#8064a2", "#a0a0a0"];
  Chart.defaults.color = text;
  Chart.defaults.borderColor = grid;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.animation = false;

  function draw(id, config, links) {
    const canvas = document.getElementById(id);
    if (!canvas) return;
    config.options = Object.assign({
      onClick(event, elements) {
        if (elements.length && links) window.location.href = links[elements[0].index];
      },
      onHover(event, elements) {
        event.native.target.style.cursor = elements.length ? "pointer" : "default";
      },
    }, config.options || {});
    new Chart(canvas, config);
  }

  function titled(title, extra) {
    return Object.assign({ plugins: { title: { display: true, text: title }, legend: { display: false } } }, extra || {});
  }

  const series = data.series;
  draw("chart-requests", {
    type: "bar",
    data: { labels: series.labels, datasets: [{ label: "Requests", data: series.requests, backgroundColor: colours[0] }] },
    options: titled("Requests"),
  }, series.links);
  draw("chart-units", {
    type: "bar",
    data: {
      labels: series.labels,
      datasets: [
        // Input as its parts (uncached, read from and written to the cache), then output.
        { label: "Units in, uncached", data: series.uncached_units, backgroundColor: colours[2] },
        { label: "Cache read", data: series.cache_read_units, backgroundColor: colours[4] },
        { label: "Cache write", data: series.cache_write_units, backgroundColor: colours[5] },
        { label: "Units out", data: series.output_units, backgroundColor: colours[1] },
      ],
    },
    options: {
      // With its legend: four stacked parts are told apart by it.
      plugins: { title: { display: true, text: "Units (tokens, images, …)" }, legend: { display: true, position: "bottom" } },
      scales: { x: { stacked: true }, y: { stacked: true } },
    },
  }, series.links);
  draw("chart-cost", {
    type: "line",
    data: { labels: series.labels, datasets: [{ label: "Cost", data: series.cost, borderColor: colours[3], backgroundColor: colours[3], tension: 0.2 }] },
    options: titled("Cost"),
  }, series.links);

  for (const id of ["by_model", "by_user", "by_key", "by_endpoint"]) {
    const table = data[id];
    draw("chart-" + id, {
      type: "bar",
      data: { labels: table.labels, datasets: [{ label: "Cost", data: table.cost, backgroundColor: colours[0] }] },
      options: Object.assign(titled("Cost"), { indexAxis: "y" }),
    }, table.links);
  }

  draw("chart-outcomes", {
    type: "doughnut",
    data: { labels: data.outcomes.labels, datasets: [{ data: data.outcomes.requests, backgroundColor: colours }] },
    options: { plugins: { title: { display: true, text: "Requests by outcome" }, legend: { position: "right" } } },
  }, data.outcomes.links);
  draw("chart-timings", {
    type: "bar",
    data: {
      labels: data.timings.labels,
      datasets: [
        { label: "Latency (ms)", data: data.timings.latency, backgroundColor: colours[0] },
        { label: "Time to first token (ms)", data: data.timings.ttft, backgroundColor: colours[1] },
      ],
    },
    options: { plugins: { title: { display: true, text: "Percentiles (bin upper bounds, ms)" } } },
  });
})();
