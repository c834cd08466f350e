// The JSON API, called with the session cookie. State-changing calls carry the CSRF token
// that login and /auth/me hand out; a 401 anywhere sends the browser to the login page.

export interface Me {
  via: string;
  role?: string;
  user?: { id: string; email: string; role: string; sites: string[] };
  csrf_token?: string;
  can_write?: boolean;
}

export interface Device {
  id: string;
  name: string;
  site: string;
  kind: string;
  labels: Record<string, string>;
  availability: { online: boolean; source: string; since: string | null; last_seen: string | null };
  last_seen: string | null;
  latest: Record<string, Record<string, number | string>>;
}

export interface Site {
  id: string;
  name: string;
  timezone: string;
}

export interface Series {
  tier: string;
  quantity: string;
  unit: string;
  channel: string | null;
  t: number[];
  avg: number[];
  min: number[];
  max: number[];
}

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

let csrf = "";
let me: Me | null = null;

export function currentUser(): Me | null {
  return me;
}

export function isAdmin(): boolean {
  return me?.role === "admin" || me?.user?.role === "admin";
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
  const r = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 204) return undefined as T;
  const text = await r.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!r.ok) {
    const err = (json as { error?: { code: string; message: string } } | null)?.error;
    if (r.status === 401 && path !== "/api/v1/auth/login") {
      me = null;
      if (!location.hash.startsWith("#/login")) location.hash = "#/login";
    }
    throw new ApiError(r.status, err?.code ?? "http", err?.message ?? `${r.status} ${r.statusText}`);
  }
  return json as T;
}

export const get = <T>(path: string) => call<T>("GET", path);
export const post = <T>(path: string, body?: unknown) => call<T>("POST", path, body ?? {});
export const patch = <T>(path: string, body: unknown) => call<T>("PATCH", path, body);
export const put = <T>(path: string, body: unknown) => call<T>("PUT", path, body);
export const del = <T>(path: string) => call<T>("DELETE", path);

/** Who is logged in, or null; remembers the CSRF token. */
export async function loadMe(): Promise<Me | null> {
  try {
    me = await get<Me>("/api/v1/auth/me");
    csrf = me.csrf_token ?? "";
    return me;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return null;
    throw e;
  }
}

export async function login(email: string, password: string): Promise<void> {
  const r = await post<{ csrf_token: string }>("/api/v1/auth/login", { email, password });
  csrf = r.csrf_token;
  await loadMe();
}

export async function logout(): Promise<void> {
  try {
    await post("/api/v1/auth/logout");
  } finally {
    me = null;
    csrf = "";
  }
}

export function qs(params: Record<string, string | number | undefined>): string {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined) u.set(k, String(v));
  return u.toString();
}

/** A device's power now: the sum over its channels, unless one is the meter's total. */
export function powerNow(d: Device): number | null {
  const chans = Object.entries(d.latest);
  const total = chans.find(([c]) => c === "total" || c === "main");
  if (total && typeof total[1].power === "number") return total[1].power;
  let sum: number | null = null;
  for (const [, v] of chans) if (typeof v.power === "number") sum = (sum ?? 0) + v.power;
  return sum;
}

export interface LiveReading {
  device: string;
  channel: string;
  ts: number;
  values: Record<string, number>;
}

/** Subscribes to live readings, handed over a commit at a time (so a page redraws once per
 *  commit, not once per reading); returns a function that closes the stream. */
export function live(
  query: string,
  onReadings: (rs: LiveReading[]) => void,
  onLagged?: () => void,
): () => void {
  const es = new EventSource(`/api/v1/live?${query}&batch=1`);
  es.addEventListener("readings", (e) => onReadings(JSON.parse((e as MessageEvent).data) as LiveReading[]));
  if (onLagged) es.addEventListener("lagged", onLagged);
  return () => es.close();
}

/** A device's power now, as the site summary and `latest=1` streams count it. */
export interface DeviceNow {
  id: string;
  name: string;
  power_w: number | null;
  last_seen: string | null;
  online: boolean;
  energy_today_kwh: number;
}

export interface SiteSummary {
  site: string;
  name: string;
  timezone: string;
  now: number;
  power_w: number;
  devices: number;
  online: number;
  energy_today_kwh: number;
  energy_month_kwh: number;
  history: { t: number[]; power_w: number[] };
  top: DeviceNow[];
  offline_count: number;
  offline: DeviceNow[];
}

export interface LatestPower {
  device: string;
  ts: number | null;
  power_w: number | null;
}

/** Subscribes to a site's devices' power, sent once a second for those that changed. */
export function livePower(site: string, onRows: (rows: LatestPower[]) => void, onLagged?: () => void): () => void {
  const es = new EventSource(`/api/v1/live?${qs({ site, latest: 1 })}`);
  es.addEventListener("latest", (e) => onRows(JSON.parse((e as MessageEvent).data)));
  if (onLagged) es.addEventListener("lagged", onLagged);
  return () => es.close();
}
