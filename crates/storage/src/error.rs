/// Storage failures. `Conflict`, `InUse` and `Invalid` are the caller's to handle; the others mean the
/// backend is unwell and are reported as server errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    /// The object is still referenced (a site with devices) and cannot be deleted.
    #[error("{0}")]
    InUse(String),
    #[error("{0}")]
    Invalid(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("sqlite value: {0}")]
    SqliteValue(#[from] rusqlite::types::FromSqlError),
    #[cfg(feature = "postgres")]
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[cfg(feature = "postgres")]
    #[error("postgres pool: {0}")]
    Pool(String),
    #[error("corrupt data in series {series}: {reason}")]
    Corrupt { series: i64, reason: String },
    #[error("schema migration {version} failed: {reason}")]
    Migration { version: u32, reason: String },
    #[error("storage worker is gone (shutting down?)")]
    WorkerGone,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
