import "./style.css";
import { currentUser, isAdmin, loadMe, logout } from "./api";
import { clear, h } from "./dom";
import { loginPage } from "./pages/login";
import { overviewPage } from "./pages/overview";
import { devicesPage } from "./pages/devices";
import { devicePage } from "./pages/device";
import { accountPage } from "./pages/account";
import { adminPage } from "./pages/admin";
import { meterPage } from "./pages/meter";

// Each page returns a cleanup (closing live streams, destroying charts) run on navigation.
export type Cleanup = () => void;
let cleanup: Cleanup | null = null;

const app = document.getElementById("app")!;
const top = document.getElementById("top")!;

function header(): void {
  const me = currentUser();
  if (!me) {
    clear(top, h("span", { class: "brand" }, "Wattline"));
    return;
  }
  const who = me.user?.email ?? me.via;
  clear(
    top,
    h("a", { class: "brand", href: "#/" }, "Wattline"),
    h(
      "nav",
      {},
      h("a", { href: "#/" }, "Overview"),
      h("a", { href: "#/devices" }, "Devices"),
      isAdmin() ? h("a", { href: "#/admin", id: "nav-admin" }, "Admin") : null,
      h("a", { href: "#/account", title: "Account" }, who),
      h(
        "button",
        {
          id: "logout",
          class: "link",
          onclick: async () => {
            await logout().catch(() => undefined);
            location.hash = "#/login";
          },
        },
        "Log out",
      ),
    ),
  );
}

/** Counts navigations: a page still loading when the next one starts renders into a
 *  detached element and is cleaned up as soon as it returns. */
let navigation = 0;

async function route(): Promise<void> {
  const mine = ++navigation;
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  const hash = location.hash || "#/";
  const [path, query = ""] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query);
  const view = h("div");
  if (parts[0] === "login") {
    header();
    clear(app, view);
    cleanup = loginPage(view);
    return;
  }
  if (!currentUser() && !(await loadMe())) {
    location.hash = "#/login";
    return;
  }
  if (mine !== navigation) return;
  header();
  clear(app, view);
  let done: Cleanup | null = null;
  try {
    if (parts.length === 0) done = await overviewPage(view, params);
    else if (parts[0] === "devices") done = await devicesPage(view, params);
    else if (parts[0] === "device" && parts[1]) done = await devicePage(view, parts[1], params);
    else if (parts[0] === "meter" && parts[1]) done = await meterPage(view, parts[1], params);
    else if (parts[0] === "account") done = accountPage(view);
    else if (parts[0] === "admin") done = await adminPage(view);
    else clear(view, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Overview")));
  } catch (e) {
    clear(view, h("p", { class: "error" }, `Could not load this page: ${(e as Error).message}`));
  }
  if (mine === navigation) cleanup = done;
  else done?.();
}

window.addEventListener("hashchange", () => void route());
void route();
