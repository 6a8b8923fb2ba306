/* evflex — operator sign-in. */
(function () {
  "use strict";
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  const submit = document.getElementById("login-submit");
  const totp = document.getElementById("totp");
  let lockTimer = null;

  totp.addEventListener("input", () => { totp.value = totp.value.replace(/\D/g, "").slice(0, 6); });

  function lockFor(seconds) {
    let left = seconds;
    clearInterval(lockTimer);
    const tick = () => {
      if (left <= 0) {
        clearInterval(lockTimer);
        submit.disabled = false;
        error.textContent = "";
        return;
      }
      error.textContent = `Too many attempts, try again in ${left} s`;
      left -= 1;
    };
    submit.disabled = true;
    tick();
    lockTimer = setInterval(tick, 1000);
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (submit.disabled) return;
    error.textContent = "";
    submit.disabled = true;
    try {
      await EV.api("/api/v1/auth/login", {
        method: "POST",
        body: {
          username: form.username.value.trim(),
          password: form.password.value,
          totp: totp.value.trim(),
        },
      });
      location.assign("/");
      return;
    } catch (e) {
      if (e.status === 429) {
        if (e.retryAfter != null) { lockFor(e.retryAfter); return; }
        error.textContent = "Too many attempts, try again later. " + e.detail;
      } else if (e.status === 401) {
        error.textContent = e.detail || "Wrong username, password or code.";
        form.password.value = "";
        totp.value = "";
        form.password.focus();
      } else {
        error.textContent = e.detail;
      }
    }
    submit.disabled = false;
  });
})();
