// Payment forms that help: a form marked data-kz-pay="<total>" recomputes the money part from the
// points entered ([data-kz-points]) into [data-kz-rest] (an input or text) and the submit label
// ([data-kz-pay-label], template in data-template with {money} and {points}, and optionally
// data-template-money / data-template-points for a payment that is all money / all points); "use all points"
// buttons ([data-kz-use-all]) fill in the most points allowed. A file, not inline: pages run
// under a Content-Security-Policy without 'unsafe-inline'.
(() => {
  const lang = document.documentElement.lang || "en";
  const yen = (n) => (n < 0 ? "-" : "") + "¥" + Math.abs(n).toLocaleString(lang === "ja" ? "ja-JP" : "en-US");
  const pts = (n) => n.toLocaleString(lang === "ja" ? "ja-JP" : "en-US") + " pt";
  for (const form of document.querySelectorAll("form[data-kz-pay]")) {
    const total = Number(form.dataset.kzPay);
    const pointsInput = form.querySelector("[data-kz-points]");
    if (!pointsInput || !Number.isFinite(total)) continue;
    const max = Math.min(total, Number(pointsInput.max || total));
    const update = () => {
      let points = Math.floor(Number(pointsInput.value));
      if (!Number.isFinite(points) || points < 0) points = 0;
      points = Math.min(points, max);
      const rest = total - points;
      for (const out of form.querySelectorAll("[data-kz-rest]")) {
        if (out instanceof HTMLInputElement) out.value = String(rest);
        else out.textContent = yen(rest);
      }
      for (const out of form.querySelectorAll("[data-kz-points-shown]")) out.textContent = pts(points);
      for (const label of form.querySelectorAll("[data-kz-pay-label]")) {
        // A template without the part that is zero, when the page gives one.
        const template =
          (points === 0 && label.dataset.templateMoney) ||
          (rest === 0 && label.dataset.templatePoints) ||
          label.dataset.template ||
          "{money}";
        label.textContent = template.replace("{money}", yen(rest)).replace("{points}", pts(points));
      }
    };
    pointsInput.addEventListener("input", update);
    for (const button of form.querySelectorAll("[data-kz-use-all]")) {
      button.hidden = false;
      button.addEventListener("click", (event) => {
        event.preventDefault();
        pointsInput.value = String(max);
        update();
      });
    }
    update();
  }
})();
