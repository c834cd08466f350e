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

async function route(): Promise<void> {
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  const hash = location.hash || "#/";
  const [path, query = ""] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query);
  if (parts[0] === "login") {
    header();
    cleanup = loginPage(app);
    return;
  }
  if (!currentUser() && !(await loadMe())) {
    location.hash = "#/login";
    return;
  }
  header();
  clear(app);
  try {
    if (parts.length === 0) cleanup = await overviewPage(app, params);
    else if (parts[0] === "devices") cleanup = await devicesPage(app, params);
    else if (parts[0] === "device" && parts[1]) cleanup = await devicePage(app, parts[1], params);
    else if (parts[0] === "meter" && parts[1]) cleanup = await meterPage(app, parts[1], params);
    else if (parts[0] === "account") cleanup = accountPage(app);
    else if (parts[0] === "admin") cleanup = await adminPage(app);
    else clear(app, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Overview")));
  } catch (e) {
    clear(app, h("p", { class: "error" }, `Could not load this page: ${(e as Error).message}`));
  }
}

window.addEventListener("hashchange", () => void route());
void route();
