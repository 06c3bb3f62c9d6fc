//! CLI round trip against a running `keygate serve`.
// Helpers outside #[test] functions unwrap too: these are tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod server;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use serde_json::{json, Value};
use server::*;

struct Cli<'a> {
    dir: &'a Path,
    api: String,
}

impl Cli<'_> {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = command(self.dir);
        c.env("KEYGATE_API_URL", &self.api).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = c.spawn().unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> (Value, String) {
        let out = self.run(args, stdin);
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "keygate {args:?} failed: {stderr}");
        (serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}")), stdout)
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args, None);
        assert_eq!(out.status.code(), Some(1), "keygate {args:?} should fail");
        assert!(out.stdout.is_empty());
        String::from_utf8(out.stderr).unwrap()
    }
}

#[test]
fn cli_round_trip() {
    let deployment = Deployment::new();
    let dir = deployment.dir.clone();
    // No admin token configured: one is generated, printed once to stderr.
    let server = Server::start(&dir, &[]);
    let cli = Cli { dir: &dir, api: server.api.clone() };

    let (providers, _) = cli.ok(&["providers", "list"], None);
    assert!(providers["providers"].as_array().unwrap().iter().any(|p| p["id"] == "openai"));
    let (p, _) = cli.ok(&["providers", "get", "anthropic"], None);
    assert_eq!(p["format"], "anthropic");

    // Provider key value via stdin; never printed.
    let secret = "sk-cli-secret-value-0123456789";
    let (pk, out) = cli.ok(
        &["provider-keys", "create", "--provider", "openai", "--name", "main", "--managed"],
        Some(&format!("{secret}\n")),
    );
    assert!(!out.contains(secret));
    let pk_id = pk["id"].as_str().unwrap().to_string();
    assert_eq!(pk["managed"], true);
    assert_eq!(pk["keyRedacted"], "sk-...6789");
    let (_, out) = cli.ok(&["provider-keys", "list"], None);
    assert!(out.contains(&pk_id) && !out.contains(secret));

    // Access keys.
    let (k, _) = cli.ok(&["access-keys", "create", "--name", "laptop", "--description", "dev box"], None);
    let id = k["id"].as_str().unwrap().to_string();
    let token = k["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("kg-"));
    let (got, out) = cli.ok(&["access-keys", "get", &id], None);
    assert!(!out.contains(&token));
    assert_eq!(got["description"], "dev box");
    let (list, _) = cli.ok(&["access-keys", "list", "--limit", "5"], None);
    assert_eq!(list["accessKeys"][0]["id"], id.as_str());

    // A key's own concurrency cap: set, replaced, removed; refused out of bounds.
    let (capped, _) = cli.ok(&["access-keys", "create", "--name", "capped", "--max-concurrent-requests", "2"], None);
    assert_eq!(capped["maxConcurrentRequests"], 2);
    let cap_id = capped["id"].as_str().unwrap().to_string();
    let (upd, _) = cli.ok(&["access-keys", "update", &cap_id, "--max-concurrent-requests", "5"], None);
    assert_eq!(upd["maxConcurrentRequests"], 5);
    let (upd, _) = cli.ok(&["access-keys", "update", &cap_id, "--name", "still-capped"], None);
    assert_eq!(upd["maxConcurrentRequests"], 5);
    let (upd, _) = cli.ok(&["access-keys", "update", &cap_id, "--no-max-concurrent-requests"], None);
    assert_eq!(upd["maxConcurrentRequests"], Value::Null);
    let err = cli.fails(&["access-keys", "update", &cap_id, "--max-concurrent-requests", "0"]);
    assert!(err.contains("maxConcurrentRequests"), "{err}");
    let out = cli.run(
        &["access-keys", "update", &cap_id, "--max-concurrent-requests", "3", "--no-max-concurrent-requests"],
        None,
    );
    assert!(!out.status.success(), "both a cap and none");
    cli.ok(&["access-keys", "delete", &cap_id], None);

    // The lookup listener serves the managed key (decrypted, trimmed).
    let gw = std::fs::read_to_string(dir.join("gateway-token")).unwrap();
    let mut r = agent()
        .get(&format!("{}/v1/lookup/{}", server.lookup, keygate_proto::token::digest(&token)))
        .header("authorization", &format!("Bearer {}", gw.trim()))
        .call()
        .unwrap();
    let doc: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(doc["status"], "active");
    assert_eq!(doc["providers"][0]["routes"][0]["keys"][0], json!({"id": pk_id, "value": secret}));

    // Configurations from a file.
    let file = deployment.tmp.path().join("cfg.json");
    std::fs::write(
        &file,
        json!({"name": "only-openai", "access": {"providers": {"allow": ["openai"]}},
               "router": {"rules": [{"provider": "openai", "steps": [{"type": "user", "keys": [{"id": pk_id}]}]}]}})
        .to_string(),
    )
    .unwrap();
    let (cfg, _) = cli.ok(&["configs", "create", "--file", file.to_str().unwrap()], None);
    let cid = cfg["id"].as_str().unwrap().to_string();
    let err = cli.fails(&["configs", "create", "--file", file.to_str().unwrap()]);
    assert!(err.contains("conflict"), "{err}");
    let (upd, _) = cli.ok(&["access-keys", "update", &id, "--config", &cid, "--disable", "--name", "laptop2"], None);
    assert_eq!(upd["accessKeyConfiguration"]["id"], cid.as_str());
    assert_eq!(upd["disabled"], true);
    assert_eq!(upd["name"], "laptop2");
    let err = cli.fails(&["configs", "delete", &cid]);
    assert!(err.contains("conflict"), "{err}");
    let err = cli.fails(&["provider-keys", "delete", &pk_id]);
    assert!(err.contains("conflict"), "{err}");
    let (upd, _) = cli.ok(&["access-keys", "update", &id, "--no-config", "--enable"], None);
    assert_eq!(upd["accessKeyConfiguration"], Value::Null);
    assert_eq!(upd["disabled"], false);
    std::fs::write(&file, json!({"description": "changed"}).to_string()).unwrap();
    let (cfg2, _) = cli.ok(&["configs", "update", &cid, "--file", file.to_str().unwrap()], None);
    assert_eq!(cfg2["description"], "changed");
    let (cfgs, _) = cli.ok(&["configs", "list"], None);
    assert_eq!(cfgs["accessKeyConfigurations"].as_array().unwrap().len(), 1);
    cli.ok(&["configs", "get", &cid], None);
    cli.ok(&["configs", "delete", &cid], None);

    // Rotation.
    let (rot, _) = cli.ok(&["access-keys", "rotate", &id, "--grace-seconds", "60"], None);
    let token2 = rot["token"].as_str().unwrap();
    assert_ne!(token2, token);
    let new_secret = "sk-cli-rotated-value-99998888";
    let (rpk, out) = cli.ok(&["provider-keys", "rotate", &pk_id], Some(new_secret));
    assert!(!out.contains(new_secret));
    assert_eq!(rpk["keyRedacted"], "sk-...8888");
    let (upk, _) = cli.ok(&["provider-keys", "update", &pk_id, "--unmanaged", "--name", "main2"], None);
    assert_eq!(upk["managed"], false);
    cli.ok(&["provider-keys", "get", &pk_id], None);

    // Custom providers.
    std::fs::write(
        &file,
        json!({"providerId": "local", "name": "Local", "baseUrl": "http://127.0.0.1:1/v1", "format": "openai"})
            .to_string(),
    )
    .unwrap();
    let (lp, _) = cli.ok(&["providers", "create", "--file", file.to_str().unwrap()], None);
    assert_eq!(lp["id"], "local");
    std::fs::write(&file, json!({"name": "Local 2"}).to_string()).unwrap();
    let (lp, _) = cli.ok(&["providers", "update", "local", "--file", file.to_str().unwrap()], None);
    assert_eq!(lp["name"], "Local 2");
    cli.ok(&["providers", "delete", "local"], None);

    // Errors: message on stderr, exit code 1.
    let (del, _) = cli.ok(&["access-keys", "delete", &id], None);
    assert_eq!(del["deleted"], true);
    let err = cli.fails(&["access-keys", "get", &id]);
    assert!(err.contains("not_found"), "{err}");
    let err = cli.fails(&["access-keys", "create", "--name", "x", "--expires-at", "2001-01-01T00:00:00Z"]);
    assert!(err.contains("expiresAt"), "{err}");
    let out = cli.run(&["access-keys", "list", "--admin-token", "wrong"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
    let out = Cli { dir: &deployment.tmp.path().join("nowhere"), api: server.api.clone() }
        .run(&["access-keys", "list"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEYGATE_ADMIN_TOKEN"));
    let out = Cli { dir: &dir, api: "http://127.0.0.1:1".into() }.run(&["access-keys", "list"], None);
    assert_eq!(out.status.code(), Some(1));

    // The admin token was printed once, at generation; logs hold no secrets.
    let admin = std::fs::read_to_string(dir.join("admin-token")).unwrap().trim().to_string();
    let stderr = server.stop();
    assert_eq!(stderr.matches(&admin).count(), 1, "{stderr}");
    for s in [token.as_str(), token2, secret, new_secret, gw.trim()] {
        assert!(!stderr.contains(s), "secret in log: {s}");
    }
    assert!(!stderr.contains(&keygate_proto::token::digest(&token)));
    let server = Server::start(&dir, &[]);
    let stderr = server.stop();
    assert!(!stderr.contains(&admin), "admin token printed again");
}

#[test]
fn cli_budgets_usage_credits_prices() {
    let deployment = Deployment::new();
    let dir = deployment.dir.clone();
    let server = Server::start(&dir, &[]);
    let cli = Cli { dir: &dir, api: server.api.clone() };

    let (k, _) = cli.ok(
        &[
            "access-keys",
            "create",
            "--name",
            "b",
            "--budget-tokens",
            "1000",
            "--budget-usd",
            "2.5",
            "--budget-window",
            "daily",
        ],
        None,
    );
    assert_eq!(k["budget"], json!({"tokens": 1000, "costUsd": 2.5, "window": "daily"}));
    let id = k["id"].as_str().unwrap();
    let (k, _) = cli.ok(&["access-keys", "update", id, "--budget-tokens", "5"], None);
    assert_eq!(k["budget"], json!({"tokens": 5, "window": "none"}));
    let (k, _) = cli.ok(
        &[
            "access-keys",
            "update",
            id,
            "--budget-tokens",
            "7",
            "--budget-window",
            "weekly",
            "--time-zone",
            "Europe/Berlin",
        ],
        None,
    );
    assert_eq!(k["budget"], json!({"tokens": 7, "window": "weekly", "timeZone": "Europe/Berlin"}));
    assert!(k["budgetUsage"]["resetsAt"].is_string(), "{k}");
    let (k, _) =
        cli.ok(&["access-keys", "update", id, "--budget-tokens", "7", "--budget-time-zone", "Asia/Tokyo"], None);
    assert_eq!(k["budget"], json!({"tokens": 7, "window": "none", "timeZone": "Asia/Tokyo"}));
    assert!(cli
        .fails(&["access-keys", "update", id, "--budget-tokens", "7", "--time-zone", "Mars/Base"])
        .contains("budget.timeZone"));
    let (k, _) = cli.ok(&["access-keys", "update", id, "--no-budget"], None);
    assert_eq!(k["budget"], Value::Null);

    let (c, _) = cli.ok(&["credits", "get"], None);
    assert_eq!(c["enabled"], false);
    let (c, _) = cli.ok(&["credits", "add", "--usd", "3"], None);
    assert_eq!((c["enabled"].clone(), c["balanceUsd"].clone()), (json!(true), json!(3.0)));
    let (c, _) = cli.ok(&["credits", "add", "--usd", "-1"], None);
    assert_eq!(c["balanceUsd"], 2.0);
    let (c, _) = cli.ok(&["credits", "disable"], None);
    assert_eq!(c["enabled"], false);

    let (p, _) = cli.ok(&["prices", "set", "openrouter/openai/gpt-4o*", "--input", "3", "--output", "9"], None);
    assert_eq!((p["provider"].clone(), p["model"].clone()), (json!("openrouter"), json!("openai/gpt-4o*")));
    let (list, _) = cli.ok(&["prices", "list"], None);
    assert!(list["prices"].as_array().unwrap().iter().any(|e| e["model"] == "openai/gpt-4o*"));
    cli.ok(&["prices", "delete", "openrouter/openai/gpt-4o*"], None);
    assert!(cli.fails(&["prices", "delete", "*/*"]).contains("conflict"));

    let (u, _) = cli.ok(&["usage", "list", "--key", id, "--from", "2020-01-01T00:00:00Z", "--limit", "5"], None);
    assert_eq!(u["usage"], json!([]));
    let (s, _) = cli.ok(&["usage", "summary", "--group-by", "day"], None);
    assert_eq!(s, json!({"groupBy": "day", "rows": []}));
    drop(server.stop());
}

#[test]
fn cli_management_keys_roles_and_the_audit_log() {
    let deployment = Deployment::new();
    let dir = deployment.dir.clone();
    let server = Server::start(&dir, &[("KEYGATE_AUDIT_RETENTION_DAYS", "30")]);
    let cli = Cli { dir: &dir, api: server.api.clone() };

    let (me, _) = cli.ok(&["whoami"], None);
    assert_eq!(me, json!({"actor": "bootstrap", "name": "bootstrap admin token", "role": "admin"}));
    let (op, out) = cli.ok(&["api-keys", "create", "--name", "ops", "--role", "operator"], None);
    let op_id = op["id"].as_str().unwrap().to_string();
    let op_token = op["token"].as_str().unwrap().to_string();
    assert!(op_token.starts_with("kgm_") && out.contains(&op_token), "shown once, here");
    let (v, _) = cli.ok(&["api-keys", "create", "--name", "reader", "--role", "viewer"], None);
    let v_id = v["id"].as_str().unwrap().to_string();
    let v_token = v["token"].as_str().unwrap().to_string();
    assert!(cli.run(&["api-keys", "create", "--name", "x", "--role", "root"], None).status.code() != Some(0));
    let (list, out) = cli.ok(&["api-keys", "list", "--limit", "1"], None);
    assert_eq!(list["apiKeys"][0]["id"], v_id.as_str());
    assert!(list["nextPageUri"].is_string());
    assert!(!out.contains(&op_token) && !out.contains(&v_token));
    let (got, _) = cli.ok(&["api-keys", "get", &op_id], None);
    assert_eq!(got["role"], "operator");

    // The CLI as the operator (--api-key, or KEYGATE_API_KEY) and as the viewer.
    let (me, _) = cli.ok(&["whoami", "--api-key", &op_token], None);
    assert_eq!(me["actor"], op_id.as_str());
    let (k, _) = cli.ok(&["access-keys", "create", "--name", "by-operator", "--api-key", &op_token], None);
    let k_id = k["id"].as_str().unwrap().to_string();
    let err = cli.fails(&["credits", "add", "--usd", "1", "--api-key", &op_token]);
    assert!(err.contains("403 insufficient_role") && err.contains("admin"), "{err}");
    let mut c = command(&dir);
    let out = c
        .env("KEYGATE_API_URL", &server.api)
        .env("KEYGATE_API_KEY", &v_token)
        .args(["access-keys", "delete", &k_id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("insufficient_role"));
    let (list, _) = cli.ok(&["access-keys", "list", "--api-key", &v_token], None);
    assert_eq!(list["accessKeys"][0]["id"], k_id.as_str());

    // Update, rotate, delete.
    let (upd, _) = cli.ok(&["api-keys", "update", &v_id, "--role", "operator", "--name", "reader2"], None);
    assert_eq!((upd["role"].as_str(), upd["name"].as_str()), (Some("operator"), Some("reader2")));
    let (rot, _) = cli.ok(&["api-keys", "rotate", &v_id], None);
    let v_token2 = rot["token"].as_str().unwrap().to_string();
    assert!(cli.fails(&["whoami", "--api-key", &v_token]).contains("unauthorized"));
    cli.ok(&["access-keys", "delete", &k_id, "--api-key", &v_token2], None);
    let (del, _) = cli.ok(&["api-keys", "delete", &v_id], None);
    assert_eq!(del["deleted"], true);
    assert!(cli.fails(&["whoami", "--api-key", &v_token2]).contains("unauthorized"));

    // The audit log, filtered.
    let (log, out) = cli.ok(&["audit-log"], None);
    let actions: Vec<&str> =
        log["auditLog"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "api_key.delete",
            "access_key.delete",
            "api_key.rotate",
            "api_key.role_change",
            "access_key.create",
            "api_key.create",
            "api_key.create"
        ]
    );
    for t in [&op_token, &v_token, &v_token2, &k["token"].as_str().unwrap().to_string()] {
        assert!(!out.contains(t.as_str()));
    }
    let (mine, _) = cli.ok(&["audit-log", "--actor", &op_id], None);
    assert_eq!(mine["auditLog"].as_array().unwrap().len(), 1);
    assert_eq!(mine["auditLog"][0]["resourceId"], k_id.as_str());
    let (res, _) = cli.ok(&["audit-log", "--resource", &k_id, "--since", "2020-01-01T00:00:00Z", "--limit", "1"], None);
    assert_eq!(res["auditLog"][0]["action"], "access_key.delete");
    assert!(res["nextPageUri"].as_str().unwrap().contains("resourceId="));
    let (none, _) = cli.ok(&["audit-log", "--until", "2020-01-01T00:00:00Z"], None);
    assert_eq!(none["auditLog"], json!([]));
    assert!(cli.fails(&["audit-log", "--since", "yesterday"]).contains("since"));
    let stderr = server.stop();
    for t in [&op_token, &v_token, &v_token2] {
        assert!(!stderr.contains(t.as_str()), "token in the log");
    }
}

#[test]
fn serve_refuses_a_usage_retention_shorter_than_the_longest_budget_window() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = command(&tmp.path().join("data"));
    c.args(["serve", "--api-port", "0", "--lookup-port", "0"])
        .env("KEYGATE_USAGE_RETENTION_DAYS", "31")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("keygate serve started with KEYGATE_USAGE_RETENTION_DAYS=31");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("KEYGATE_USAGE_RETENTION_DAYS=31 is shorter than the longest budget window"), "{stderr}");
    assert!(out.stdout.is_empty(), "never ready");
}
