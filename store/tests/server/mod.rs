//! Runs the real `keygate serve` binary on free ports, over SQLite or, when
//! `KEYGATE_TEST_DATABASE_URL` is set, a fresh PostgreSQL database.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../testdb/mod.rs"]
pub mod testdb;
#[allow(unused_imports)]
pub use testdb::test_audit;

use std::collections::HashMap;
use std::sync::Mutex;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_keygate");

pub struct Server {
    pub child: Child,
    pub api: String,
    pub lookup: String,
    stderr: Option<JoinHandle<String>>,
}

/// The PostgreSQL database of each data directory of a PostgreSQL run.
static DATABASES: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);

/// A `keygate` command with a clean KEYGATE_* environment (but the
/// PostgreSQL database of `data_dir`, in a PostgreSQL run).
pub fn command(data_dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYGATE_") {
            c.env_remove(k);
        }
    }
    c.env("KEYGATE_DATA_DIR", data_dir).env("RUST_LOG", "info");
    if let Some(url) = DATABASES.lock().unwrap().as_ref().and_then(|m| m.get(data_dir)) {
        c.env("KEYGATE_DATABASE_URL", url);
    }
    c
}

/// A deployment of a test: its data directory and, in a PostgreSQL run, its
/// database (dropped with this value).
pub struct Deployment {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub pg: Option<testdb::PgDb>,
}

impl Deployment {
    pub fn new() -> Deployment {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let pg = testdb::PgDb::create();
        if let Some(db) = &pg {
            DATABASES.lock().unwrap().get_or_insert_with(HashMap::new).insert(dir.clone(), db.url.clone());
        }
        Deployment { tmp, dir, pg }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Ok(mut m) = DATABASES.lock() {
            if let Some(m) = m.as_mut() {
                m.remove(&self.dir);
            }
        }
    }
}

impl Server {
    pub fn start(data_dir: &Path, envs: &[(&str, &str)]) -> Server {
        let mut c = command(data_dir);
        c.arg("serve").env("KEYGATE_API_PORT", "0").env("KEYGATE_LOOKUP_PORT", "0");
        for (k, v) in envs {
            c.env(k, v);
        }
        let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("keygate serve did not become ready");
        // keygate store ready: api=127.0.0.1:PORT lookup=127.0.0.1:PORT data=...
        let field = |name: &str| {
            line.split_whitespace().find_map(|w| w.strip_prefix(name)).unwrap_or_else(|| panic!("{line}")).to_string()
        };
        assert!(line.starts_with("keygate store ready: "), "{line}");
        Server {
            api: format!("http://{}", field("api=")),
            lookup: format!("http://{}", field("lookup=")),
            child,
            stderr: Some(stderr),
        }
    }

    /// SIGKILL.
    pub fn kill(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.stderr.take().unwrap().join().unwrap()
    }

    /// SIGTERM, then waits for a clean exit; returns stderr.
    pub fn stop(mut self) -> String {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "keygate serve exited with {status}");
        self.stderr.take().unwrap().join().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stderr.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent()
}
