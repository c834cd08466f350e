//! Black-box tests: the built `wattline` binary, real SQLite files, a real PostgreSQL, HTTP.

mod admin;
mod authz;
mod demo;
mod durability;
mod energy;
mod import;
mod ingest;
mod live;
mod mqtt;
mod postgres;
mod query;
mod simulate;
mod support;
mod tcp;
mod tls;
mod ui;
