//! Alert webhooks against the real `keygate serve`: the CLI, a delivery that
//! waits out a receiver that is down across a restart of the store (pending
//! deliveries are persisted and picked up again), and logs that never carry
//! the secret. SQLite, or PostgreSQL with `KEYGATE_TEST_DATABASE_URL`.
// Helpers outside #[test] functions unwrap too: these are tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod server;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use server::*;
use sha2::Sha256;

const SECRET: &str = "whsec_server-test-secret-0123456789";

type Seen = Arc<Mutex<Vec<(HashMap<String, String>, Vec<u8>)>>>;

/// A plain HTTP/1.1 receiver on `listener`: records each request, answers 200.
fn receive(listener: TcpListener) -> Seen {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut headers = HashMap::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            s.lock().unwrap().push((headers, body));
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    seen
}

fn keygate(dir: &Path, api: &str, args: &[&str], stdin: Option<&str>) -> (Value, String) {
    let mut c = command(dir);
    c.env("KEYGATE_API_URL", api).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = c.spawn().unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "keygate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    (serde_json::from_str(&stdout).unwrap(), stdout)
}

fn gateway_post(server: &Server, dir: &Path, path: &str, body: &Value) -> Value {
    let token = std::fs::read_to_string(dir.join("gateway-token")).unwrap();
    let mut r = agent()
        .post(&format!("{}{path}", server.lookup))
        .header("authorization", &format!("Bearer {}", token.trim()))
        .send_json(body)
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_pending_delivery_survives_a_restart_and_no_secret_is_logged() {
    let deployment = Deployment::new();
    let dir = deployment.dir.clone();
    let envs = [("KEYGATE_ALERT_RETRY_BASE_MS", "200"), ("KEYGATE_ALERT_MAX_ATTEMPTS", "30")];
    let server = Server::start(&dir, &envs);
    // A port nobody listens on, for now.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/hook");

    // The CLI: the secret is read from stdin and shown once, by create.
    let k = |args: &[&str], stdin: Option<&str>| keygate(&dir, &server.api, args, stdin);
    let (hook, out) = k(
        &["alert-webhooks", "create", "--url", &url, "--thresholds", "50,80", "--events", "budget", "--secret-stdin"],
        Some(&format!("{SECRET}\n")),
    );
    assert_eq!(hook["secret"], SECRET);
    assert_eq!(out.matches(SECRET).count(), 1);
    let id = hook["id"].as_str().unwrap().to_string();
    assert_eq!((hook["thresholds"].clone(), hook["events"].clone()), (json!([50, 80]), json!(["budget"])));
    for args in [vec!["alert-webhooks", "list"], vec!["alert-webhooks", "get", &id]] {
        let (_, out) = k(&args, None);
        assert!(out.contains(&id) && !out.contains(SECRET), "{out}");
    }
    let (updated, _) = k(&["alert-webhooks", "update", &id, "--thresholds", "50", "--disable"], None);
    assert_eq!((updated["thresholds"].clone(), updated["enabled"].clone()), (json!([50]), json!(false)));
    let (updated, out) = k(&["alert-webhooks", "update", &id, "--enable", "--expiry-warning-days", "3"], None);
    assert_eq!((updated["enabled"].clone(), updated["expiryWarningDays"].clone()), (json!(true), json!(3)));
    assert!(!out.contains(SECRET));
    let (d, _) = k(&["alert-webhooks", "deliveries", &id], None);
    assert_eq!(d["deliveries"], json!([]));

    // Usage past 50 % of a key's budget, as an Envoy reports it.
    let (key, _) = k(&["access-keys", "create", "--name", "k", "--budget-tokens", "100"], None);
    let key = key["id"].as_str().unwrap().to_string();
    let r = gateway_post(
        &server,
        &dir,
        "/v1/reserve",
        &json!({"requestId": "req-1", "accessKeyId": key, "provider": "openai", "inputTokens": 1, "outputTokens": 1}),
    );
    let now = keygate_store::ids::now_ms();
    gateway_post(
        &server,
        &dir,
        "/v1/usage",
        &json!({"records": [{"requestId": "req-1", "accessKeyId": key, "provider": "openai", "attempt": 1,
            "finalAttempt": true, "status": 200, "streaming": false, "inputTokens": 60, "outputTokens": 0,
            "startedMs": now, "endedMs": now, "reservationId": r["reservationId"]}]}),
    );

    // The receiver is down: attempts fail and are recorded; it stays pending.
    let deliveries =
        |api: &str| keygate(&dir, api, &["alert-webhooks", "deliveries", &id], None).0["deliveries"].clone();
    wait_for("a failed attempt", || deliveries(&server.api)[0]["attempts"].as_u64().unwrap_or(0) >= 2);
    let before = deliveries(&server.api);
    assert_eq!(before.as_array().unwrap().len(), 1);
    assert_eq!((before[0]["status"].clone(), before[0]["lastStatus"].clone()), (json!("pending"), Value::Null));
    assert!(before[0]["lastError"].is_string() && before[0]["nextAttemptAt"].is_string());
    let first_log = server.stop();

    // The receiver comes up; the store starts again and delivers what was pending.
    let seen = receive(TcpListener::bind(("127.0.0.1", port)).unwrap());
    let server = Server::start(&dir, &envs);
    wait_for("the delivery", || deliveries(&server.api)[0]["status"] == "delivered");
    let after = deliveries(&server.api);
    let attempts = after[0]["attempts"].as_u64().unwrap();
    assert!(attempts >= 3, "{after}");
    assert_eq!(after[0]["attemptLog"].as_array().unwrap().len() as u64, attempts);
    assert_eq!(after[0]["lastStatus"], 200);
    assert_eq!(after[0]["id"], before[0]["id"], "the same delivery, not a new one");
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let (headers, body) = &got[0];
    assert_eq!(headers["x-keygate-delivery"], after[0]["id"].as_str().unwrap());
    assert_eq!(headers["x-keygate-event"], "budget.threshold");
    let sig = &headers["x-keygate-signature"];
    let (t, v1) = sig.split_once(',').unwrap();
    let (t, v1) = (t.strip_prefix("t=").unwrap(), v1.strip_prefix("v1=").unwrap());
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&hex::decode(v1).unwrap()).unwrap();
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!((payload["threshold"].clone(), payload["used"].clone()), (json!(50), json!(60)));
    assert_eq!(payload, after[0]["payload"]);
    let second_log = server.stop();

    // The logs tell of the attempts, never of the secret.
    assert!(first_log.contains("alert delivery failed; will retry"), "{first_log}");
    assert!(second_log.contains("alert delivered"), "{second_log}");
    for log in [&first_log, &second_log] {
        assert!(!log.contains(SECRET));
        assert!(!log.contains(&hex::encode(SECRET)));
    }
}
