//! The one binary: `corral run` is the daemon, every other verb is a client.
//! This is the only place where errors become exit codes.

use clap::Parser;

use corral::cli::{self, Cli, Command, EXIT_USAGE};
use corral::config::{self, LogFormat};
use corral::process::output;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match cli.command {
        Command::Run => run(&cli),
        _ => cli::run_client(&cli),
    };
    std::process::exit(code);
}

fn run(cli: &Cli) -> i32 {
    let path = cli.config.clone().unwrap_or_else(config::default_path);
    let cfg = match config::load(&path) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            return EXIT_USAGE;
        }
    };
    init_tracing(cfg.supervisor.log_format);
    let socket = corral::daemon::socket_path(&cfg, cli.socket.as_deref());
    let code = corral::daemon::run(cfg, socket);
    // What jobs and corral wrote last, unless nobody reads it: then corral exits anyway.
    output::stdout_sink().flush(EXIT_FLUSH);
    output::stderr_sink().flush(EXIT_FLUSH);
    code
}

/// At exit, how long corral's stdout and stderr get to take what is still queued for them.
const EXIT_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        // Never std::io::stderr directly: a stderr nobody reads would block the actor (SPEC §7).
        .with_writer(output::SinkWriter(output::stderr_sink()));
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
