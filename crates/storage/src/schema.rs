//! The rollup table layout shared by both backends, so SQL users see the same columns.
//!
//! `rollup_1m`, `rollup_1h`, `rollup_1d`: one row per (series_id, bucket) with `last_ts`,
//! `energy_import_kwh`, `energy_export_kwh` and, for each quantity `q`, the columns
//! `q_n`, `q_avg`, `q_min`, `q_max`, `q_last` (NULL where the bucket has no value of `q`).
//! Buckets and `last_ts` are unix milliseconds in SQLite and `timestamptz` in PostgreSQL.

use wattline_domain::{BucketTier, Quantity};

pub fn rollup_table(tier: BucketTier) -> &'static str {
    match tier {
        BucketTier::Raw => "readings",
        BucketTier::Minute => "rollup_1m",
        BucketTier::Hour => "rollup_1h",
        BucketTier::Day => "rollup_1d",
    }
}

/// The per-quantity column suffixes, in the order every backend reads and writes them.
pub const STAT_SUFFIXES: [&str; 5] = ["n", "avg", "min", "max", "last"];

/// `voltage_n, voltage_avg, …, energy_export_last`: the per-quantity columns in order.
pub fn stat_columns() -> Vec<String> {
    Quantity::ALL
        .iter()
        .flat_map(|q| {
            STAT_SUFFIXES
                .iter()
                .map(move |s| format!("{}_{s}", q.field()))
        })
        .collect()
}
