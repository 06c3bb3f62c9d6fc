use std::process::ExitCode;

use clap::Parser;
use keygate_store::cli::{run_admin, Cli, Command};
use keygate_store::serve::{serve, ServeConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(ref args) => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            let cfg = ServeConfig {
                data_dir: cli.data_dir.clone(),
                bind: args.bind,
                api_port: args.api_port,
                lookup_port: args.lookup_port,
                admin_token: cli.admin_token.clone(),
                master_key: args.master_key.clone(),
                gateway_token: args.gateway_token.clone(),
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
        _ => match run_admin(cli) {
            Ok(Some(v)) => {
                match serde_json::to_string_pretty(&v) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("keygate: {e}");
                        return ExitCode::FAILURE;
                    }
                }
                ExitCode::SUCCESS
            }
            Ok(None) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keygate: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
