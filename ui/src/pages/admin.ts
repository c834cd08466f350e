import { Device, Site, del, get, patch, post, put, qs } from "../api";
import { Child, ago, clear, h } from "../dom";

interface User {
  id: string;
  email: string;
  role: string;
  sites: string[];
  disabled: boolean;
}
interface Pending {
  format: string;
  id: string;
  last_seen: string;
  messages: number;
}
interface IngestToken {
  id: string;
  name: string;
  created_at: string;
}

/** A secret is shown in this box once, right after it was made; the server keeps only hashes. */
function secretBox(title: string, rows: [string, string][]): HTMLElement {
  return h(
    "div",
    { class: "card secret", id: "credentials", role: "status" },
    h("strong", {}, title),
    h("p", { class: "small" }, "Shown only now: copy it into the device. It cannot be displayed again; rotate it if it is lost."),
    h("table", {}, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, h("code", { "data-secret": k }, v)))))),
  );
}

function field(label: string, input: HTMLInputElement | HTMLSelectElement): HTMLElement {
  return h("label", {}, label, input);
}

export async function adminPage(app: HTMLElement): Promise<() => void> {
  const out = h("div", { id: "admin-result" });
  const show = (...c: Child[]) => {
    clear(out, ...c);
    out.scrollIntoView({ block: "nearest" });
  };
  const fail = (e: unknown) => show(h("p", { class: "error", role: "alert" }, (e as Error).message));
  const guard = (fn: () => Promise<void>) => () => void fn().catch(fail);

  const [sites, devices, users, pending] = await Promise.all([
    get<Site[]>("/api/v1/sites"),
    get<Device[]>("/api/v1/devices"),
    get<User[]>("/api/v1/users").catch(() => [] as User[]),
    get<{ pending: Pending[] }>("/api/v1/pending-devices").catch(() => ({ pending: [] as Pending[] })),
  ]);
  const siteOptions = (selected?: string) => sites.map((s) => h("option", { value: s.id, selected: s.id === selected }, `${s.name} (${s.id})`));
  const reload = () => window.dispatchEvent(new HashChangeEvent("hashchange"));

  // Devices
  const devId = h("input", { id: "new-device-id", placeholder: "optional" });
  const devName = h("input", { id: "new-device-name", required: true });
  const devSite = h("select", { id: "new-device-site" }, siteOptions());
  const devKind = h("input", { id: "new-device-kind", value: "meter" });
  const devForm = h(
    "form",
    { id: "new-device", class: "grid-form" },
    field("Id", devId),
    field("Name", devName),
    field("Site", devSite),
    field("Kind", devKind),
    h("button", { type: "submit" }, "Create device"),
  );
  devForm.addEventListener("submit", (e) => {
    e.preventDefault();
    guard(async () => {
      const d = await post<{ id: string; token: string; mqtt?: { username: string; password: string } }>("/api/v1/devices", {
        id: devId.value.trim() || undefined,
        name: devName.value.trim(),
        site: devSite.value,
        kind: devKind.value.trim() || undefined,
      });
      const rows: [string, string][] = [
        ["device", d.id],
        ["HTTP token", d.token],
      ];
      if (d.mqtt) rows.push(["MQTT username", d.mqtt.username], ["MQTT password", d.mqtt.password]);
      devId.value = devName.value = "";
      show(secretBox(`Device ${d.id} created`, rows));
      devicesBody.prepend(deviceRow({ id: d.id, name: d.id, site: devSite.value } as Device));
    })();
  });
  const deviceRow = (d: Device) =>
    h(
      "tr",
      { "data-device": d.id },
      h("td", {}, h("a", { href: `#/device/${encodeURIComponent(d.id)}` }, d.name || d.id)),
      h("td", {}, d.site),
      h("td", {}, ago(d.last_seen)),
      h(
        "td",
        { class: "actions" },
        h("button", {
          onclick: guard(async () => {
            const r = await post<{ token: string }>(`/api/v1/devices/${encodeURIComponent(d.id)}/token`);
            show(secretBox(`New HTTP token for ${d.id}`, [["HTTP token", r.token]]));
          }),
        }, "Rotate token"),
        h("button", {
          onclick: guard(async () => {
            await del(`/api/v1/devices/${encodeURIComponent(d.id)}/token`);
            show(h("p", {}, `The HTTP token of ${d.id} is revoked.`));
          }),
        }, "Revoke token"),
        h("button", {
          onclick: guard(async () => {
            const r = await post<{ mqtt: { username: string; password: string } }>(`/api/v1/devices/${encodeURIComponent(d.id)}/mqtt`);
            show(secretBox(`New MQTT credentials for ${d.id}`, [["MQTT username", r.mqtt.username], ["MQTT password", r.mqtt.password]]));
          }),
        }, "Rotate MQTT"),
        h("button", {
          onclick: guard(async () => {
            if (!confirm(`Delete ${d.id} and its readings?`)) return;
            await del(`/api/v1/devices/${encodeURIComponent(d.id)}`);
            reload();
          }),
        }, "Delete"),
      ),
    );
  const devicesBody = h("tbody", {}, devices.map(deviceRow));

  // Sites, with their ingest tokens and TCP enrollment
  const siteId = h("input", { id: "new-site-id", required: true });
  const siteName = h("input", { id: "new-site-name", required: true });
  const siteTz = h("input", { id: "new-site-tz", value: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC" });
  const siteForm = h("form", { class: "grid-form" }, field("Id", siteId), field("Name", siteName), field("Time zone", siteTz), h("button", { type: "submit" }, "Create site"));
  siteForm.addEventListener("submit", (e) => {
    e.preventDefault();
    guard(async () => {
      await post("/api/v1/sites", { id: siteId.value.trim(), name: siteName.value.trim(), timezone: siteTz.value.trim() });
      reload();
    })();
  });
  const siteRow = (s: Site) => {
    const tokens = h("td", {}, "…");
    const tcp = h("input", { type: "checkbox", "aria-label": `TCP enrollment for ${s.id}` });
    tcp.addEventListener("change", guard(async () => {
      await put(`/api/v1/sites/${encodeURIComponent(s.id)}/tcp-enrollment`, { open: tcp.checked });
    }));
    void get<{ open: boolean }>(`/api/v1/sites/${encodeURIComponent(s.id)}/tcp-enrollment`).then((r) => (tcp.checked = r.open)).catch(() => undefined);
    const loadTokens = () =>
      get<IngestToken[]>(`/api/v1/sites/${encodeURIComponent(s.id)}/tokens`)
        .then((list) =>
          clear(
            tokens,
            list.map((t) =>
              h("div", {}, `${t.name || t.id} `, h("button", { class: "link", onclick: guard(async () => { await del(`/api/v1/sites/${encodeURIComponent(s.id)}/tokens/${t.id}`); loadTokens(); }) }, "revoke")),
            ),
            h("button", {
              onclick: guard(async () => {
                const r = await post<{ token: string }>(`/api/v1/sites/${encodeURIComponent(s.id)}/tokens`, { name: "gateway" });
                show(secretBox(`Ingest token for site ${s.id}`, [["site token", r.token]]));
                loadTokens();
              }),
            }, "New ingest token"),
          ),
        )
        .catch(() => clear(tokens, h("span", { class: "muted" }, "–")));
    loadTokens();
    // The zone is changed in place: rollups and bills follow the site's local days.
    const zone = h("input", { value: s.timezone, "aria-label": `Time zone of ${s.id}`, size: 16 });
    const saveZone = h("button", {
      onclick: guard(async () => {
        await patch(`/api/v1/sites/${encodeURIComponent(s.id)}`, { timezone: zone.value.trim() });
        show(h("span", { class: "ok" }, `Time zone of ${s.id} saved: ${zone.value.trim()}`));
      }),
    }, "Save zone");
    return h("tr", { "data-site": s.id }, h("td", {}, s.id), h("td", {}, s.name), h("td", { class: "actions" }, zone, saveZone), h("td", {}, tcp), tokens);
  };

  // Users
  const userEmail = h("input", { id: "new-user-email", type: "email", required: true });
  const userPassword = h("input", { id: "new-user-password", type: "password", autocomplete: "new-password", required: true });
  const userRole = h("select", { id: "new-user-role" }, ["viewer", "owner", "admin"].map((r) => h("option", { value: r }, r)));
  const userSites = h("select", { id: "new-user-sites", multiple: true }, siteOptions());
  const userForm = h("form", { class: "grid-form" }, field("E-mail", userEmail), field("Password", userPassword), field("Role", userRole), field("Sites", userSites), h("button", { type: "submit" }, "Create user"));
  userForm.addEventListener("submit", (e) => {
    e.preventDefault();
    guard(async () => {
      await post("/api/v1/users", {
        email: userEmail.value.trim(),
        password: userPassword.value,
        role: userRole.value,
        sites: Array.from(userSites.selectedOptions).map((o) => o.value),
      });
      reload();
    })();
  });

  // A user's sites and enabled state are changed in place.
  const userRow = (u: User) => {
    const sitesPicker = h("select", { multiple: true, "aria-label": `Sites of ${u.email}` },
      sites.map((s) => h("option", { value: s.id, selected: u.sites.includes(s.id) }, s.id)));
    return h(
      "tr",
      { "data-user": u.email },
      h("td", {}, u.email),
      h("td", {}, u.role),
      h("td", {}, u.role === "admin" ? h("span", { class: "muted" }, "all") : sitesPicker),
      h(
        "td",
        { class: "actions" },
        u.role === "admin" ? null : h("button", { onclick: guard(async () => {
          await patch(`/api/v1/users/${encodeURIComponent(u.id)}`, { sites: Array.from(sitesPicker.selectedOptions).map((o) => o.value) });
          show(h("p", {}, `Sites of ${u.email} saved.`));
        }) }, "Save sites"),
        h("button", { onclick: guard(async () => {
          await patch(`/api/v1/users/${encodeURIComponent(u.id)}`, { disabled: !u.disabled });
          reload();
        }) }, u.disabled ? "Enable" : "Disable"),
      ),
    );
  };

  // Pending devices
  const pendingRow = (p: Pending) => {
    const site = h("select", { "aria-label": "Site" }, siteOptions());
    return h(
      "tr",
      {},
      h("td", {}, p.format),
      h("td", {}, p.id),
      h("td", {}, ago(p.last_seen)),
      h("td", {}, String(p.messages)),
      h(
        "td",
        { class: "actions" },
        site,
        h("button", { onclick: guard(async () => {
          const d = await post<{ id: string; mqtt?: { username: string; password: string } }>(
            `/api/v1/pending-devices/${encodeURIComponent(p.format)}/${encodeURIComponent(p.id)}/accept`, { site: site.value });
          show(secretBox(`Device ${d.id} accepted`, d.mqtt ? [["MQTT username", d.mqtt.username], ["MQTT password", d.mqtt.password]] : [["device", d.id]]));
        }) }, "Accept"),
        h("button", { onclick: guard(async () => {
          await post(`/api/v1/pending-devices/${encodeURIComponent(p.format)}/${encodeURIComponent(p.id)}/reject`);
          reload();
        }) }, "Reject"),
      ),
    );
  };

  clear(
    app,
    h("h1", {}, "Administration"),
    out,
    h("section", { class: "card" }, h("h2", {}, "Devices"), devForm, h("div", { class: "table-wrap" }, h("table", { id: "admin-devices" }, h("thead", {}, h("tr", {}, h("th", {}, "Device"), h("th", {}, "Site"), h("th", {}, "Last seen"), h("th", {}, ""))), devicesBody))),
    h("section", { class: "card" }, h("h2", {}, "Pending devices"),
      pending.pending.length === 0 ? h("p", { class: "muted" }, "None: plugs that publish with a site's ingest token and no device show up here.")
        : h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Format"), h("th", {}, "Id"), h("th", {}, "Last seen"), h("th", {}, "Messages"), h("th", {}, ""))), h("tbody", {}, pending.pending.map(pendingRow))))),
    h("section", { class: "card" }, h("h2", {}, "Sites"), siteForm, h("div", { class: "table-wrap" }, h("table", { id: "admin-sites" }, h("thead", {}, h("tr", {}, h("th", {}, "Id"), h("th", {}, "Name"), h("th", {}, "Zone"), h("th", {}, "TCP enrollment"), h("th", {}, "Ingest tokens"))), h("tbody", {}, sites.map(siteRow))))),
    users.length
      ? h("section", { class: "card" }, h("h2", {}, "Users"), userForm, h("div", { class: "table-wrap" }, h("table", { id: "users" }, h("thead", {}, h("tr", {}, h("th", {}, "E-mail"), h("th", {}, "Role"), h("th", {}, "Sites"), h("th", {}, ""))), h("tbody", {}, users.map(userRow)))))
      : null,
    h("p", { class: "muted small" }, h("a", { href: `/api/v1/audit?${qs({ limit: 100 })}` }, "Audit log (JSON)")),
  );
  return () => undefined;
}

