import { login } from "../api";
import { clear, h } from "../dom";

export function loginPage(app: HTMLElement): () => void {
  const error = h("p", { class: "error", role: "alert" });
  const email = h("input", { id: "email", type: "email", name: "email", autocomplete: "username", required: true });
  const password = h("input", {
    id: "password",
    type: "password",
    name: "password",
    autocomplete: "current-password",
    required: true,
  });
  const form = h(
    "form",
    { class: "card narrow", id: "login-form" },
    h("h1", {}, "Log in"),
    h("label", {}, "E-mail", email),
    h("label", {}, "Password", password),
    h("button", { type: "submit" }, "Log in"),
    error,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    try {
      await login(email.value, password.value);
      location.hash = "#/";
    } catch (err) {
      error.textContent = (err as Error).message;
    }
  });
  clear(app, form);
  email.focus();
  return () => undefined;
}
