//! Runs a scenario once on the embedded store and once on PostgreSQL.

use crate::support::{drop_pg_database, fresh_pg_database, Options};

/// `both_backends!(scenario)` makes `scenario::sqlite` and `scenario::postgres` tests from a
/// `fn scenario(Options)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name($crate::support::Options::default());
            }
            #[test]
            fn postgres() {
                $crate::postgres::with_pg(stringify!($name), super::$name);
            }
        }
    )*};
}

pub fn with_pg(tag: &str, scenario: fn(Options)) {
    let Some(url) = fresh_pg_database(tag) else {
        return;
    };
    let result = std::panic::catch_unwind(|| {
        scenario(Options {
            database: Some(url.clone()),
            ..Default::default()
        })
    });
    drop_pg_database(&url);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
