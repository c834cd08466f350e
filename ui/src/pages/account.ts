import { currentUser, post } from "../api";
import { clear, h } from "../dom";

export function accountPage(app: HTMLElement): () => void {
  const me = currentUser();
  const msg = h("p", { role: "status" });
  const current = h("input", { type: "password", id: "current-password", autocomplete: "current-password" });
  const next = h("input", { type: "password", id: "new-password", autocomplete: "new-password" });
  const form = h(
    "form",
    { class: "card narrow" },
    h("h2", {}, "Change password"),
    h("label", {}, "Current password", current),
    h("label", {}, "New password", next),
    h("button", { type: "submit" }, "Change password"),
    msg,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    msg.className = "";
    try {
      await post("/api/v1/auth/password", { current_password: current.value, new_password: next.value });
      msg.textContent = "Password changed.";
      current.value = next.value = "";
    } catch (err) {
      msg.className = "error";
      msg.textContent = (err as Error).message;
    }
  });
  clear(
    app,
    h("h1", {}, "Account"),
    h("p", {}, `Logged in as ${me?.user?.email ?? me?.via ?? "?"} (${me?.user?.role ?? me?.role ?? ""})`),
    me?.user ? form : h("p", { class: "muted" }, "Token access has no password."),
  );
  return () => undefined;
}
