use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use keygate_store::cli::{run_admin, Cli, Command};
use keygate_store::policy::alerts::RetryPolicy;
use keygate_store::serve::{serve, ServeConfig};
use keygate_store::storage::{copy, PgTarget};
use keygate_store::webhooks::AlertSettings;
use serde_json::{json, Value};

fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

/// `keygate migrate` and `keygate copy`: work on the database directly.
fn run_database(cli: &Cli) -> Result<Option<Value>, String> {
    let url = cli.database_url.as_deref();
    let ca = cli.database_ca.as_deref();
    match &cli.command {
        Command::Migrate => {
            let applied = keygate_store::serve::migrate(&cli.data_dir, url, ca)?;
            Ok(Some(json!({ "applied": applied })))
        }
        Command::Copy(args) => {
            let to = args.to.as_deref().or(url).ok_or("copy needs --to <postgres URL> (or KEYGATE_DATABASE_URL)")?;
            let from = copy::sqlite_source(&args.from.clone().unwrap_or_else(|| cli.data_dir.display().to_string()));
            let to = PgTarget::new(to, ca.map(Path::to_path_buf));
            let copied = copy::sqlite_to_postgres(&from, &to).map_err(|e| e.to_string())?;
            let tables: serde_json::Map<String, Value> =
                copied.tables.into_iter().map(|(t, n)| (t, Value::from(n))).collect();
            Ok(Some(json!({ "copied": tables, "version": copied.version })))
        }
        _ => Err("not a database command".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(ref args) => {
            init_logging();
            let cfg = ServeConfig {
                data_dir: cli.data_dir.clone(),
                database_url: cli.database_url.clone(),
                database_ca: cli.database_ca.clone(),
                bind: args.bind,
                api_port: args.api_port,
                lookup_port: args.lookup_port,
                admin_token: cli.admin_token.clone(),
                master_key: args.master_key.clone(),
                gateway_token: args.gateway_token.clone(),
                usage_retention_days: args.usage_retention_days,
                alerts: AlertSettings {
                    retry: RetryPolicy { base_ms: args.alert_retry_base_ms, max_attempts: args.alert_max_attempts },
                    timeout_ms: args.alert_timeout_ms,
                },
                audit_retention_days: args.audit_retention_days,
                console_secure_cookie: args.console_secure_cookie,
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("keygate: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("keygate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Migrate | Command::Copy(_) => {
            init_logging();
            print_result(run_database(&cli))
        }
        _ => print_result(run_admin(cli)),
    }
}

fn print_result(result: Result<Option<Value>, String>) -> ExitCode {
    match result {
        Ok(Some(v)) => match serde_json::to_string_pretty(&v) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keygate: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keygate: {e}");
            ExitCode::FAILURE
        }
    }
}
