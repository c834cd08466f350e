//! `GET /api/v1/openapi.json`: the API described in OpenAPI 3.0. A test checks that every
//! route of the router appears here, so the document cannot fall behind.

use axum::Json;
use serde_json::{json, Value};

fn err(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn path_id(name: &str, what: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": what,
           "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"}})
}

fn query(name: &str, what: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": what, "schema": schema})
}

fn time_param(name: &str, what: &str) -> Value {
    query(
        name,
        &format!("{what}: RFC 3339 or unix milliseconds"),
        json!({"type": "string"}),
    )
}

/// The common failures of an admin route.
fn admin_errors(mut responses: Value) -> Value {
    responses["400"] = err("Bad input; the message names what is wrong");
    responses["401"] = err("No or unknown token");
    responses["403"] = err("Not allowed: an owner's read-only access, a viewer, a read-only token, a missing CSRF header, or a route for administrators");
    responses
}

pub fn spec() -> Value {
    let device_id = path_id("id", "Device id");
    let site_id = path_id("id", "Site id");
    let site_id_tcp = site_id.clone();
    let range = [
        time_param("from", "Start, inclusive"),
        time_param("to", "End, exclusive"),
    ];
    let quantities: Vec<&str> = wattline_domain::Quantity::ALL
        .iter()
        .map(|q| q.field())
        .collect();
    let mut doc = json!({
      "openapi": "3.0.3",
      "info": {
        "title": "Wattline API",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Meter readings in (JSON, InfluxDB line protocol), devices and sites, queries. \
          Authenticate with `Authorization: Token <token>` (or Bearer). Errors are \
          `{\"error\": {\"code\", \"message\"}}` with a stable code."
      },
      "components": {
        "securitySchemes": {
          "token": {"type": "http", "scheme": "bearer", "description": "Admin token, a user's API token, or (ingest only) a site ingest or device token"},
          "session": {"type": "apiKey", "in": "cookie", "name": "wattline_session",
            "description": "Browser session from POST /api/v1/auth/login; state-changing requests must also send the X-CSRF-Token header"}
        },
        "schemas": {
          "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                           "accepted": {"type": "integer"}, "rejected": {"type": "integer"},
                           "lines": {"type": "array", "items": {"type": "object"}}}}}},
          "Reading": {"type": "object", "required": ["device"], "properties": {
            "device": {"type": "string"}, "channel": {"type": "string"},
            "ts": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "voltage": {"type": "number"}, "current": {"type": "number"}, "power": {"type": "number"},
            "apparent_power": {"type": "number"}, "reactive_power": {"type": "number"},
            "power_factor": {"type": "number"}, "frequency": {"type": "number"},
            "energy": {"type": "number", "description": "Cumulative imported energy, kWh"},
            "energy_export": {"type": "number", "description": "Cumulative exported energy, kWh"}}},
          "Site": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"},
            "timezone": {"type": "string"}, "created_at": {"type": "string"}}},
          "NewSite": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"},
            "name": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "\\S"},
            "timezone": {"type": "string", "description": "IANA zone, e.g. Europe/Zurich", "example": "Europe/Zurich"}}},
          "Device": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"},
            "site": {"type": "string"}, "kind": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "created_at": {"type": "string"}, "last_seen": {"type": "string", "nullable": true},
            "latest": {"type": "object"}, "token": {"type": "string", "description": "Only when created"},
            "mqtt": {"$ref": "#/components/schemas/MqttCredential"},
            "bindings": {"type": "array", "items": {"$ref": "#/components/schemas/Binding"}},
            "availability": {"type": "object", "properties": {
              "online": {"type": "boolean"},
              "source": {"type": "string", "enum": ["connection", "lwt", "silence", "never"]},
              "since": {"type": "integer", "nullable": true}, "last_seen": {"type": "integer", "nullable": true}}}}},
          "MqttCredential": {"type": "object", "description": "Shown only when created or rotated",
            "properties": {"username": {"type": "string"}, "password": {"type": "string"}}},
          "Binding": {"type": "object", "required": ["format", "id"], "properties": {
            "format": {"type": "string", "enum": ["tasmota", "shelly", "emoncms", "esp32", "clemap"]},
            "id": {"type": "string", "description": "Tasmota topic, Shelly id or prefix, emoncms node, ESP32 topic prefix, Clemap serial"}}},
          "NewDevice": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"},
            "name": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "\\S"},
            "site": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"},
            "kind": {"type": "string"}, "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "binding": {"$ref": "#/components/schemas/Binding"}}},
          "Series": {"type": "object", "properties": {
            "tier": {"type": "string", "enum": ["raw", "1m", "1h", "1d"]}, "quantity": {"type": "string"},
            "unit": {"type": "string"}, "channel": {"type": "string", "nullable": true},
            "t": {"type": "array", "items": {"type": "integer"}},
            "avg": {"type": "array", "items": {"type": "number"}},
            "min": {"type": "array", "items": {"type": "number"}},
            "max": {"type": "array", "items": {"type": "number"}}}}
        }
      },
      "security": [{"token": []}, {"session": []}],
      "paths": {
        "/healthz": {"get": {"summary": "Liveness and storage health", "security": [],
          "responses": {"200": ok_json("Healthy", json!({"type": "object"})), "503": ok_json("Storage unavailable", json!({"type": "object"}))}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (administrators)",
          "responses": admin_errors(json!({"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}))}},
        "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [],
          "responses": {"200": ok_json("OpenAPI 3.0", json!({"type": "object"}))}}},
        "/api/v1/readings": {"post": {"summary": "Write readings as JSON (one object or an array)",
          "description": "A batch with bad items is stored in part: good readings are stored and 400 partial_write lists the rest.",
          "requestBody": {"required": true, "content": {"application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/Reading"}, {"type": "array", "items": {"$ref": "#/components/schemas/Reading"}}]}}}},
          "responses": {"200": ok_json("Stored durably", json!({"type": "object", "properties": {"accepted": {"type": "integer"}}})),
            "400": err("Bad readings (partial_write: the good ones were stored)"), "401": err("No or unknown token"),
            "403": err("Token may not write these devices"), "404": err("Unknown device"),
            "413": err("Body too large"), "429": err("Too many requests from this address (rate_limited); see Retry-After"), "503": err("Storage is behind; retry")}}},
        "/write": {"post": {"summary": "InfluxDB 1.x line protocol write",
          "parameters": [query("precision", "Timestamp unit", json!({"type": "string", "enum": ["ns", "us", "ms", "s"]})),
                         query("db", "Ignored (InfluxDB compatibility)", json!({"type": "string"})),
                         query("p", "Token as InfluxDB 1.x password", json!({"type": "string"}))],
          "requestBody": {"required": true, "content": {"text/plain": {"schema": {"type": "string"}}}},
          "responses": {"204": {"description": "Stored durably"}, "400": err("Bad lines (partial_write: the good ones were stored)"),
            "401": err("No or unknown token"), "403": err("Token may not write these devices"),
            "404": err("Unknown device"), "413": err("Body too large"), "429": err("Too many requests from this address (rate_limited); see Retry-After"), "503": err("Storage is behind; retry")}}},
        "/api/v2/write": {"post": {"summary": "InfluxDB 2.x line protocol write",
          "parameters": [query("precision", "Timestamp unit", json!({"type": "string", "enum": ["ns", "us", "ms", "s"]})),
                         query("org", "Ignored", json!({"type": "string"})), query("bucket", "Ignored", json!({"type": "string"}))],
          "requestBody": {"required": true, "content": {"text/plain": {"schema": {"type": "string"}}}},
          "responses": {"204": {"description": "Stored durably"}, "400": err("Bad lines"), "401": err("No or unknown token"),
            "403": err("Forbidden device"), "404": err("Unknown device"), "413": err("Body too large"), "429": err("Too many requests from this address (rate_limited); see Retry-After"), "503": err("Storage is behind")}}},
        "/api/v1/sites": {
          "get": {"summary": "List sites", "responses": admin_errors(json!({"200": ok_json("Sites", json!({"type": "array", "items": {"$ref": "#/components/schemas/Site"}}))}))},
          "post": {"summary": "Create a site", "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewSite"}}}},
            "responses": admin_errors(json!({"201": ok_json("Created", json!({"$ref": "#/components/schemas/Site"})), "409": err("Id taken")}))}},
        "/api/v1/sites/{id}": {
          "parameters": [site_id.clone()],
          "get": {"summary": "One site", "responses": admin_errors(json!({"200": ok_json("Site", json!({"$ref": "#/components/schemas/Site"})), "404": err("No such site")}))},
          "patch": {"summary": "Rename or change the zone", "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object",
              "additionalProperties": false, "properties": {"name": {"type": "string"}, "timezone": {"type": "string"}}}}}},
            "responses": admin_errors(json!({"200": ok_json("Site", json!({"$ref": "#/components/schemas/Site"})), "404": err("No such site")}))},
          "delete": {"summary": "Delete an empty site", "responses": admin_errors(json!({"204": {"description": "Deleted"}, "404": err("No such site"), "409": err("Site has devices")}))}},
        "/api/v1/sites/{id}/tokens": {
          "parameters": [site_id.clone()],
          "get": {"summary": "List the site's ingest tokens (without secrets)", "responses": admin_errors(json!({"200": ok_json("Tokens", json!({"type": "array", "items": {"type": "object"}})), "404": err("No such site")}))},
          "post": {"summary": "Create an ingest token for gateways and Telegraf; the secret is shown only here",
            "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false, "properties": {"name": {"type": "string"}}}}}},
            "responses": admin_errors(json!({"201": ok_json("Created", json!({"type": "object"})), "404": err("No such site")}))}},
        "/api/v1/sites/{id}/tokens/{token_id}": {
          "parameters": [site_id, path_id("token_id", "Token id")],
          "delete": {"summary": "Revoke an ingest token", "responses": admin_errors(json!({"204": {"description": "Revoked"}, "404": err("No such token")}))}},
        "/api/v1/devices": {
          "get": {"summary": "Every device with its latest reading", "responses": admin_errors(json!({"200": ok_json("Devices", json!({"type": "array", "items": {"$ref": "#/components/schemas/Device"}}))}))},
          "post": {"summary": "Register a device; its token is shown only in this answer",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewDevice"}}}},
            "responses": admin_errors(json!({"201": ok_json("Created", json!({"$ref": "#/components/schemas/Device"})), "409": err("Id taken")}))}},
        "/api/v1/devices/{id}": {
          "parameters": [device_id.clone()],
          "get": {"summary": "One device", "responses": admin_errors(json!({"200": ok_json("Device", json!({"$ref": "#/components/schemas/Device"})), "404": err("No such device")}))},
          "patch": {"summary": "Change name, site, kind or labels", "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object",
              "additionalProperties": false, "properties": {"name": {"type": "string"}, "site": {"type": "string"}, "kind": {"type": "string"},
              "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}}}},
            "responses": admin_errors(json!({"200": ok_json("Device", json!({"$ref": "#/components/schemas/Device"})), "404": err("No such device")}))},
          "delete": {"summary": "Delete a device and all its data", "responses": admin_errors(json!({"204": {"description": "Deleted"}, "404": err("No such device")}))}},
        "/api/v1/devices/{id}/token": {
          "parameters": [device_id.clone()],
          "post": {"summary": "Rotate the device token (the old one stops working)", "responses": admin_errors(json!({"200": ok_json("New token", json!({"type": "object"})), "404": err("No such device")}))},
          "delete": {"summary": "Revoke the device token without a new one", "responses": admin_errors(json!({"204": {"description": "Revoked"}, "404": err("No such device")}))}},
        "/api/v1/devices/{id}/mqtt": {
          "parameters": [device_id.clone()],
          "post": {"summary": "Issue a new MQTT password (shown once); the old one stops working and its connections close",
            "responses": admin_errors(json!({"200": ok_json("New MQTT credential", json!({"type": "object", "properties": {"id": {"type": "string"}, "mqtt": {"$ref": "#/components/schemas/MqttCredential"}}})), "404": err("No such device")}))},
          "delete": {"summary": "Revoke the device's MQTT credential and close its connections",
            "responses": admin_errors(json!({"204": {"description": "Revoked"}, "404": err("No credential")}))}},
        "/api/v1/devices/{id}/bindings": {
          "parameters": [device_id.clone()],
          "get": {"summary": "Vendor topic identities bound to the device",
            "responses": admin_errors(json!({"200": ok_json("Bindings", json!({"type": "object"})), "404": err("No such device")}))},
          "post": {"summary": "Bind a vendor topic identity (Tasmota topic, Shelly id, ...) to the device",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Binding"}}}},
            "responses": admin_errors(json!({"201": ok_json("Bound", json!({"type": "object"})), "400": err("Bad binding"), "404": err("No such device"), "409": err("Identity bound to another device")}))}},
        "/api/v1/devices/{id}/bindings/{format}/{vendor_id}": {
          "parameters": [device_id.clone(), path_id("format", "Payload family"), path_id("vendor_id", "Vendor identity")],
          "delete": {"summary": "Unbind a vendor topic identity", "responses": admin_errors(json!({"204": {"description": "Unbound"}, "404": err("No such binding")}))}},
        "/api/v1/pending-devices": {
          "get": {"summary": "Identities seen on MQTT that no device is bound to",
            "responses": admin_errors(json!({"200": ok_json("Pending devices", json!({"type": "object"}))}))}},
        "/api/v1/pending-devices/{format}/{vendor_id}/accept": {
          "parameters": [path_id("format", "Payload family"), path_id("vendor_id", "Vendor identity")],
          "post": {"summary": "Create a device for a pending identity, bind it and issue its credentials",
            "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {
              "device": {"type": "string"}, "name": {"type": "string"}, "site": {"type": "string"}, "kind": {"type": "string"}}}}}},
            "responses": admin_errors(json!({"201": ok_json("Device created", json!({"$ref": "#/components/schemas/Device"})), "404": err("Not pending"), "409": err("Device id taken")}))}},
        "/api/v1/pending-devices/{format}/{vendor_id}/reject": {
          "parameters": [path_id("format", "Payload family"), path_id("vendor_id", "Vendor identity")],
          "post": {"summary": "Drop this identity's messages from now on", "responses": admin_errors(json!({"204": {"description": "Rejected"}}))}},
        "/api/v1/devices/{id}/series": {
          "parameters": [device_id.clone()],
          "get": {"summary": "One quantity over time at the finest tier that fits max_points",
            "parameters": [range[0].clone(), range[1].clone(),
              query("quantity", "Quantity (default power)", json!({"type": "string", "enum": quantities})),
              query("channel", "Channel (default: the only one, or main)", json!({"type": "string"})),
              query("max_points", "Most points wanted (default 1000)", json!({"type": "integer", "minimum": 1, "maximum": 100000}))],
            "responses": admin_errors(json!({"200": ok_json("Series", json!({"$ref": "#/components/schemas/Series"})), "404": err("No such device or channel")}))}},
        "/api/v1/devices/{id}/stats": {
          "parameters": [device_id.clone()],
          "get": {"summary": "avg/min/max/last of each quantity and energy used, per channel",
            "parameters": [range[0].clone(), range[1].clone(), query("channel", "Only this channel", json!({"type": "string"}))],
            "responses": admin_errors(json!({"200": ok_json("Statistics", json!({"type": "object"})), "404": err("No such device")}))}},
        "/api/v1/devices/{id}/energy": {
          "parameters": [device_id],
          "get": {"summary": "kWh per hour, day or month in the site's time zone",
            "parameters": [range[0].clone(), range[1].clone(),
              query("interval", "Bucket size", json!({"type": "string", "enum": ["hour", "day", "month"]})),
              query("channel", "Only this channel", json!({"type": "string"}))],
            "responses": admin_errors(json!({"200": ok_json("Energy", json!({"type": "object"})), "404": err("No such device")}))}},
        "/api/v1/export": {"get": {"summary": "Raw readings as CSV, streamed",
          "parameters": [query("device", "One device (default all)", json!({"type": "string"})), range[0].clone(), range[1].clone(),
            query("format", "Only csv", json!({"type": "string", "enum": ["csv"]}))],
          "responses": admin_errors(json!({"200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}, "404": err("No such device")}))}}
      }
    });
    add_site_summary(&mut doc);
    add_tcp(&mut doc, site_id_tcp);
    add_accounts(&mut doc);
    add_live(&mut doc);
    add_ui(&mut doc);
    doc
}

/// The dashboard's page and files (not an API, but served by the same router).
fn add_ui(doc: &mut Value) {
    doc["paths"]["/"] = json!({"get": {"summary": "The web dashboard (or, in a binary built without it, how to build it)",
        "security": [],
        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}});
    doc["paths"]["/assets/{path}"] = json!({"get": {"summary": "The dashboard's scripts and styles (content-hashed names, cached for a year)",
        "security": [],
        "parameters": [{"name": "path", "in": "path", "required": true, "description": "File name under assets/",
            "schema": {"type": "string"}}],
        "responses": {"200": {"description": "The file", "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
            "404": err("No such file")}}});
}

/// The live stream of readings (Server-Sent Events).
fn add_live(doc: &mut Value) {
    doc["paths"]["/api/v1/live"] = json!({"get": {
        "summary": "Readings as they are stored, as Server-Sent Events",
        "description": "Each stored reading is an event `reading` with data \
          `{\"device\", \"channel\", \"ts\" (unix ms), \"values\": {quantity: number}}`. \
          A comment line keeps the stream open every 15 s. A client that falls too far behind \
          gets an event `lagged` (`{\"missed_commits\": n}`) and should refetch what it shows. \
          With neither `device` nor `site`, every device the caller may read. With `latest=1`, \
          instead of every reading, once a second an event `latest` with data \
          `[{\"device\", \"ts\", \"power_w\"}]`: the power now of each device that sent \
          something in that second, counted as the site summary counts it (a dashboard of a \
          thousand meters). With `batch=1`, one event `readings` per commit whose data is the \
          array of that commit's readings for the stream (what the dashboard's device page \
          opens). The caller's access is checked again every 10 s; losing it ends the stream.",
        "parameters": [
            query("device", "Device ids: repeat the parameter or separate with commas",
                json!({"type": "array", "items": {"type": "string"}, "maxItems": 1000})),
            query("site", "Every device of this site (not with device)", json!({"type": "string"})),
            query("latest", "1: each changed device's power once a second instead of every reading",
                json!({"type": "string", "enum": ["0", "1", "true", "false"]})),
            query("batch", "1: one event `readings` per commit, its readings as an array (not with latest)",
                json!({"type": "string", "enum": ["0", "1", "true", "false"]}))],
        "responses": admin_errors(json!({
            "200": {"description": "The event stream; it ends when the server shuts down",
                "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "404": err("No such device or site"),
            "503": err("The server is shutting down")}))}});
    doc["paths"]["/api/v1/rejected-readings"] = json!({"get": {
        "summary": "The most recent readings refused over HTTP, MQTT and TCP, newest first (administrators)",
        "description": "Kept in memory on this node: the last 200, at most 10 from one request. \
          A TCP meter repeating the same unknown id is listed once per connection.",
        "responses": admin_errors(json!({"200": ok_json("Rejected readings", json!({"type": "object",
            "properties": {"rejected": {"type": "array", "items": {"type": "object", "properties": {
                "ts": {"type": "string"}, "transport": {"type": "string"}, "actor": {"type": "string"},
                "code": {"type": "string"}, "message": {"type": "string"}}}}}}))}))}});
}

/// TCP socket-meter enrollment; added apart from the big literal, whose macro expansion is at
/// the compiler's recursion limit.
fn add_tcp(doc: &mut Value, site_id: Value) {
    doc["components"]["schemas"]["TcpEnrollment"] = json!({"type": "object", "properties": {
        "site": {"type": "string"}, "open": {"type": "boolean"}}});
    doc["paths"]["/api/v1/sites/{id}/tcp-enrollment"] = json!({
      "parameters": [site_id],
      "get": {"summary": "Whether the site enrolls TCP socket meters that ask for an id",
        "responses": admin_errors(json!({"200": ok_json("Enrollment", json!({"$ref": "#/components/schemas/TcpEnrollment"})), "404": err("No such site")}))},
      "put": {"summary": "Open or close enrollment of TCP socket meters in this site (off by default)",
        "description": "While open, a meter that sends {\"id\": 0} to the --tcp listener becomes device tcp-<n> of this site (the first open site by id, if several are) and is answered <n>. Close it once the meters are installed: the protocol has no credentials.",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["open"],
          "additionalProperties": false, "properties": {"open": {"type": "boolean"}}}}}},
        "responses": admin_errors(json!({"200": ok_json("Enrollment", json!({"$ref": "#/components/schemas/TcpEnrollment"})), "404": err("No such site")}))}
    });
}

/// Login, users, API tokens and the audit log.
fn add_accounts(doc: &mut Value) {
    let schemas = &mut doc["components"]["schemas"];
    schemas["User"] = json!({"type": "object", "properties": {
        "id": {"type": "string"}, "email": {"type": "string"},
        "role": {"type": "string", "enum": ["admin", "owner", "viewer"]},
        "sites": {"type": "array", "items": {"type": "string"}},
        "disabled": {"type": "boolean"}, "created_at": {"type": "string"}}});
    schemas["ApiToken"] = json!({"type": "object", "properties": {
        "id": {"type": "string"}, "user": {"type": "string"}, "name": {"type": "string"},
        "scope": {"type": "string", "enum": ["read", "write"]},
        "sites": {"type": "array", "nullable": true, "items": {"type": "string"}},
        "created_at": {"type": "string"}, "expires_at": {"type": "string", "nullable": true},
        "last_used_at": {"type": "string", "nullable": true},
        "token": {"type": "string", "description": "Only when created"}}});
    let user = json!({"$ref": "#/components/schemas/User"});
    let users = json!({"type": "array", "items": {"$ref": "#/components/schemas/User"}});
    let token = json!({"$ref": "#/components/schemas/ApiToken"});
    let user_id = path_id("id", "User id");
    let rule = wattline_domain::account::PASSWORD_RULE;
    let body = |schema: Value| json!({"required": true, "content": {"application/json": {"schema": schema}}});
    let paths = &mut doc["paths"];
    paths["/api/v1/auth/login"] = json!({"post": {
        "summary": "Log in with e-mail and password: sets the session cookie and answers the CSRF token",
        "security": [],
        "requestBody": body(json!({"type": "object", "required": ["email", "password"], "additionalProperties": false,
            "properties": {"email": {"type": "string"}, "password": {"type": "string"}}})),
        "responses": {
            "200": ok_json("Logged in", json!({"type": "object", "properties": {"user": user.clone(),
                "csrf_token": {"type": "string"}, "expires_at": {"type": "string"}}})),
            "400": err("Malformed body"), "401": err("Wrong e-mail or password, or a disabled account"),
            "413": err("Body over 4 KiB"),
            "429": err("Too many failed logins for the account or from the address; see Retry-After")}}});
    paths["/api/v1/auth/logout"] = json!({"post": {"summary": "End the browser session",
        "responses": admin_errors(json!({"204": {"description": "Logged out"}}))}});
    paths["/api/v1/auth/me"] = json!({"get": {"summary": "Who the credential belongs to (and the session's CSRF token)",
        "responses": admin_errors(json!({"200": ok_json("Caller", json!({"type": "object"}))}))}});
    paths["/api/v1/auth/password"] = json!({"post": {"summary": "Change one's own password; other sessions end",
        "description": format!("Rule: {rule}."),
        "requestBody": body(json!({"type": "object", "required": ["current_password", "new_password"], "additionalProperties": false,
            "properties": {"current_password": {"type": "string"}, "new_password": {"type": "string"}}})),
        "responses": admin_errors(json!({"204": {"description": "Changed"}}))}});
    paths["/api/v1/tokens"] = json!({
        "get": {"summary": "The caller's API tokens (admins: everyone's with all=true)",
            "parameters": [query("all", "Every user's tokens (admins)", json!({"type": "boolean"}))],
            "responses": admin_errors(json!({"200": ok_json("Tokens", json!({"type": "array", "items": token.clone()}))}))},
        "post": {"summary": "Create an API token; the secret is shown only in this answer",
            "requestBody": body(json!({"type": "object", "required": ["name", "scope"], "additionalProperties": false, "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "\\S"}, "scope": {"type": "string", "enum": ["read", "write"]},
                "sites": {"type": "array", "items": {"type": "string"}, "description": "Narrow to these of the user's sites"},
                "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 3650}}})),
            "responses": admin_errors(json!({"201": ok_json("Created", token.clone())}))}});
    paths["/api/v1/tokens/{id}"] = json!({"parameters": [path_id("id", "Token id")],
        "delete": {"summary": "Revoke an API token (its owner or an admin)",
            "responses": admin_errors(json!({"204": {"description": "Revoked"}, "404": err("No such token")}))}});
    paths["/api/v1/users"] = json!({
        "get": {"summary": "Every user (admins)", "responses": admin_errors(json!({"200": ok_json("Users", users)}))},
        "post": {"summary": "Create a user (admins)", "description": format!("Password rule: {rule}."),
            "requestBody": body(json!({"type": "object", "required": ["email", "password", "role"], "additionalProperties": false, "properties": {
                "email": {"type": "string", "format": "email"}, "password": {"type": "string", "minLength": 10, "maxLength": 1024},
                "role": {"type": "string", "enum": ["admin", "owner", "viewer"]},
                "sites": {"type": "array", "items": {"type": "string"}}}})),
            "responses": admin_errors(json!({"201": ok_json("Created", user.clone()), "409": err("E-mail taken")}))}});
    paths["/api/v1/users/{id}"] = json!({"parameters": [user_id.clone()],
        "get": {"summary": "One user (admins)", "responses": admin_errors(json!({"200": ok_json("User", user.clone()), "404": err("No such user")}))},
        "patch": {"summary": "Change e-mail, role, sites, disabled, or reset the password (admins)",
            "requestBody": body(json!({"type": "object", "additionalProperties": false, "properties": {
                "email": {"type": "string"}, "role": {"type": "string", "enum": ["admin", "owner", "viewer"]},
                "sites": {"type": "array", "items": {"type": "string"}}, "disabled": {"type": "boolean"},
                "password": {"type": "string"}}})),
            "responses": admin_errors(json!({"200": ok_json("User", user), "404": err("No such user"),
                "409": err("E-mail taken, or the last enabled admin")}))},
        "delete": {"summary": "Delete a user with their sessions and tokens (admins)",
            "responses": admin_errors(json!({"204": {"description": "Deleted"}, "404": err("No such user"), "409": err("The last enabled admin")}))}});
    paths["/api/v1/users/{id}/sessions"] = json!({"parameters": [user_id],
        "delete": {"summary": "End every session of a user (admins)",
            "responses": admin_errors(json!({"200": ok_json("Ended", json!({"type": "object", "properties": {"ended": {"type": "integer"}}})), "404": err("No such user")}))}});
    paths["/api/v1/audit"] = json!({"get": {"summary": "The audit log, newest first (admins)",
        "parameters": [time_param("from", "Start, inclusive"), time_param("to", "End, exclusive"),
            query("actor", "Exactly this actor", json!({"type": "string"})),
            query("action", "Exactly this action", json!({"type": "string"})),
            query("before", "Next page: events with a smaller id", json!({"type": "integer"})),
            query("limit", "At most this many (1 to 1000, default 100)", json!({"type": "integer", "minimum": 1, "maximum": 1000}))],
        "responses": admin_errors(json!({"200": ok_json("Events", json!({"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "integer"}, "ts": {"type": "string"}, "actor": {"type": "string"}, "action": {"type": "string"},
            "target": {"type": "string"}, "address": {"type": "string"}, "detail": {}}}}))}))}});
}

pub async fn document() -> Json<Value> {
    Json(spec())
}

/// The routes that add sites and devices up for the dashboard, and their schemas (apart: one `json!` of the whole document
/// would pass the macro's recursion limit).
fn add_site_summary(doc: &mut Value) {
    let site_id = path_id("id", "Site id");
    doc["paths"]["/api/v1/sites/{id}/summary"] = json!({
          "parameters": [site_id],
          "get": {"summary": "The site now: power, energy today and this month, the last hour per minute, devices ranked, offline devices",
            "parameters": [query("top", "How many devices to rank (default 50)", json!({"type": "integer", "minimum": 0, "maximum": 10000}))],
            "responses": admin_errors(json!({"200": ok_json("Summary", json!({"$ref": "#/components/schemas/SiteSummary"})), "404": err("No such site")}))}});
    doc["components"]["schemas"]["SiteSummary"] = json!({"type": "object", "required": ["site", "name", "timezone", "now", "power_w", "devices", "online",
              "energy_today_kwh", "energy_month_kwh", "history", "top", "offline_count", "offline"],
            "properties": {"site": {"type": "string"}, "name": {"type": "string"}, "timezone": {"type": "string"},
              "now": {"type": "integer"}, "power_w": {"type": "number"}, "devices": {"type": "integer"}, "online": {"type": "integer"},
              "energy_today_kwh": {"type": "number"}, "energy_month_kwh": {"type": "number"},
              "history": {"type": "object", "required": ["t", "power_w"], "properties": {
                "t": {"type": "array", "items": {"type": "integer"}}, "power_w": {"type": "array", "items": {"type": "number"}}}},
              "top": {"type": "array", "items": {"$ref": "#/components/schemas/DeviceNow"}},
              "offline_count": {"type": "integer"},
              "offline": {"type": "array", "items": {"$ref": "#/components/schemas/DeviceNow"}}}});
    doc["paths"]["/api/v1/device-stats"] = json!({"get": {
        "summary": "Power avg/min/max and energy of every device the caller may read, over a range",
        "description": "For the devices table, in one request. Ranges up to two days are read per minute, longer \
          ones per hour, widened to whole buckets. A device with several channels (phases) gets the sum of their \
          averages, and as min and max the extremes of the per-bucket sums of their means; a `total` or `main` \
          channel beside others stands for the device.",
        "parameters": [time_param("from", "Start, inclusive (default a day before to)"),
          time_param("to", "End, exclusive (default now)"),
          query("site", "Only this site's devices", json!({"type": "string"}))],
        "responses": admin_errors(json!({"200": ok_json("Statistics", json!({"type": "object", "required": ["from", "to", "tier", "devices"],
          "properties": {"from": {"type": "string"}, "to": {"type": "string"}, "tier": {"type": "string"},
            "devices": {"type": "array", "items": {"type": "object", "required": ["device", "power", "energy_import_kwh"], "properties": {
              "device": {"type": "string"}, "energy_import_kwh": {"type": "number"},
              "power": {"type": "object", "nullable": true, "required": ["avg", "min", "max"], "properties": {
                "avg": {"type": "number"}, "min": {"type": "number"}, "max": {"type": "number"}}}}}}}})),
          "404": err("No such site")}))}});
    doc["components"]["schemas"]["DeviceNow"] = json!({"type": "object", "required": ["id", "name", "power_w", "last_seen", "online", "energy_today_kwh"], "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "power_w": {"type": "number", "nullable": true},
            "last_seen": {"type": "string", "nullable": true}, "online": {"type": "boolean"}, "energy_today_kwh": {"type": "number"}}});
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_router_route_is_documented() {
        let spec = spec();
        let paths = spec["paths"].as_object().unwrap();
        let routes = crate::routes();
        assert!(routes.len() > 40, "only {} routes", routes.len());
        // axum writes a catch-all segment `{*path}`; OpenAPI knows only `{path}`.
        let documented = |path: &str| path.replace("{*", "{");
        for route in &routes {
            let method = route.method.as_str().to_lowercase();
            assert!(
                paths
                    .get(&documented(route.path))
                    .is_some_and(|p| p.get(&method).is_some()),
                "{} {} is missing from openapi.json",
                route.method,
                route.path
            );
        }
        // And nothing is documented that is not served.
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                if method == "parameters" {
                    continue;
                }
                assert!(
                    routes.iter().any(|r| documented(r.path) == *path
                        && r.method.as_str().to_lowercase() == *method),
                    "{method} {path} is documented but not routed"
                );
            }
        }
    }
}
