//! The database of a test: SQLite in the test's temp dir, or, when
//! `KEYGATE_TEST_DATABASE_URL` names a PostgreSQL server, a fresh database
//! on it (`CREATE DATABASE t_<random>`), dropped when the test ends.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

/// The server the PostgreSQL runs use; unset = SQLite.
pub const ENV: &str = "KEYGATE_TEST_DATABASE_URL";

/// The audit entry of a change a test makes on a store directly.
pub fn test_audit() -> keygate_store::storage::Audit {
    keygate_store::storage::Audit::new(
        &keygate_store::api::principal::Principal::bootstrap(),
        keygate_store::api::principal::Via::Api,
        "test.change",
        "test",
        None,
        serde_json::json!({}),
    )
}

/// Runs `f` on a plain thread: the blocking PostgreSQL client must not run
/// on a thread that drives async tasks (the tests' own runtime).
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

/// `url` with its database name replaced by `name`.
pub fn with_dbname(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    format!("{scheme}://{authority}/{name}{query}")
}

/// A fresh PostgreSQL database, dropped with this value.
pub struct PgDb {
    server: String,
    name: String,
    pub url: String,
}

impl PgDb {
    /// A new database on the server of `KEYGATE_TEST_DATABASE_URL`; `None` when it is unset.
    pub fn create() -> Option<PgDb> {
        let server = std::env::var(ENV).ok().filter(|u| !u.trim().is_empty())?;
        let name = format!("t_{}", keygate_store::ids::random_hex(8).unwrap());
        let url = with_dbname(&server, &name);
        off_runtime(|| {
            let mut c = postgres::Client::connect(&server, postgres::NoTls).unwrap();
            c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        });
        Some(PgDb { server, name, url })
    }

    /// Runs SQL on the database.
    pub fn sql(&self, sql: &str) {
        off_runtime(|| {
            let mut c = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
            c.batch_execute(sql).unwrap();
        });
    }

    /// The rows of a query, every column read as text.
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        off_runtime(|| {
            let mut c = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
            let mut out = Vec::new();
            for m in c.simple_query(sql).unwrap() {
                if let postgres::SimpleQueryMessage::Row(r) = m {
                    out.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
                }
            }
            out
        })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        off_runtime(|| {
            if let Ok(mut c) = postgres::Client::connect(&self.server, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
            }
        });
    }
}
