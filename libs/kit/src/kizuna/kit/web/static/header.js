// The header's member and live points balance, read from points through this service.
// A file, not an inline script, so that pages under a strict Content-Security-Policy
// (identity's `default-src 'self'`) run it too.
// On a phone the service links scroll sideways: keep the current service in view.
document.querySelector(".kz-services [aria-current]")?.scrollIntoView({block: "nearest", inline: "center"});

(async () => {
  try {
    const response = await fetch("/_kizuna/me", {credentials: "same-origin", cache: "no-store"});
    if (!response.ok) return;
    const me = await response.json();
    if (!me.signed_in) {
      if (me.sso_checked === false) {
        const next = location.pathname + location.search;
        location.replace(`/auth/login?prompt=none&next=${encodeURIComponent(next)}`);
      }
      return;
    }
    document.querySelector("[data-kz-member-name]").textContent = me.name;
    document.querySelector("[data-kz-signout]").hidden = false;
    document.querySelector("[data-kz-points]").textContent =
      me.points === null
        ? document.documentElement.dataset.kzPointsUnavailable || "points unavailable"
        : `${me.points.toLocaleString(document.documentElement.lang === "ja" ? "ja-JP" : "en-US")} pt`;
  } catch (error) {
    console.warn("header: member unavailable", error);
  }
})();
