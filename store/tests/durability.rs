//! Acknowledged writes survive SIGKILL; deleted keys never come back.
// Helpers outside #[test] functions unwrap too: these are tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod server;

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use server::*;

const ADMIN: &str = "durability-admin-token-000000000000";
const GATEWAY: &str = "durability-gateway-token-0000000000";

fn post(agent: &ureq::Agent, url: &str, body: &Value) -> Result<Value, String> {
    let mut r = agent
        .post(url)
        .header("authorization", &format!("Bearer {ADMIN}"))
        .send_json(body)
        .map_err(|e| e.to_string())?;
    if r.status().as_u16() != 201 {
        return Err(format!("status {}", r.status()));
    }
    serde_json::from_str(&r.body_mut().read_to_string().map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

fn status(agent: &ureq::Agent, method: &str, url: &str, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    let r = match method {
        "DELETE" => agent.delete(url).header("authorization", &auth).call(),
        _ => agent.get(url).header("authorization", &auth).call(),
    };
    r.unwrap().status().as_u16()
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let deployment = Deployment::new();
    let dir = deployment.dir.clone();
    let envs = [("KEYGATE_ADMIN_TOKEN", ADMIN), ("KEYGATE_GATEWAY_TOKEN", GATEWAY)];
    let server = Server::start(&dir, &envs);
    let agent = agent();

    // A key deleted (and acknowledged) before the crash.
    let doomed = post(&agent, &format!("{}/access-keys", server.api), &json!({"name": "doomed"})).unwrap();
    let doomed_id = doomed["id"].as_str().unwrap().to_string();
    let doomed_token = doomed["token"].as_str().unwrap().to_string();
    assert_eq!(status(&agent, "DELETE", &format!("{}/access-keys/{doomed_id}", server.api), ADMIN), 204);

    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let writer = {
        let acked = acked.clone();
        let url = format!("{}/access-keys", server.api);
        std::thread::spawn(move || {
            let agent = server::agent();
            for i in 0.. {
                match post(&agent, &url, &json!({"name": format!("k{i}"), "metadata": "x".repeat(200)})) {
                    Ok(v) => acked
                        .lock()
                        .unwrap()
                        .push((v["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())),
                    Err(_) => break,
                }
            }
        })
    };
    while acked.lock().unwrap().len() < 200 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    server.kill();
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200);

    let server = Server::start(&dir, &envs);
    for (id, token) in &acked {
        assert_eq!(status(&agent, "GET", &format!("{}/access-keys/{id}", server.api), ADMIN), 200, "{id} lost");
        let digest = keygate_proto::token::digest(token);
        let mut r = agent
            .get(&format!("{}/v1/lookup/{digest}", server.lookup))
            .header("authorization", &format!("Bearer {GATEWAY}"))
            .call()
            .unwrap();
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(v["status"], "active", "{id}");
    }
    assert_eq!(status(&agent, "GET", &format!("{}/access-keys/{doomed_id}", server.api), ADMIN), 404);
    let digest = keygate_proto::token::digest(&doomed_token);
    let mut r = agent
        .get(&format!("{}/v1/lookup/{digest}", server.lookup))
        .header("authorization", &format!("Bearer {GATEWAY}"))
        .call()
        .unwrap();
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(v["status"], "unknown");
    let stderr = server.stop();
    assert!(stderr.contains("shutting down"), "{stderr}");
}
