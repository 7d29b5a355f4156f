//! The command line (SPEC §1): clap definitions and dispatch. No logic beyond
//! turning arguments into a request and a reply into an exit code; printing
//! lives in `render`, the socket in `client`.

pub(crate) mod check;
mod client;
pub mod render;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config;
use crate::protocol::{ErrorKind, Reply, Request, Response};

/// Exit codes shared by every client command (SPEC §1).
pub const EXIT_OK: i32 = 0;
pub const EXIT_REFUSED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_NO_DAEMON: i32 = 3;

#[derive(Parser, Debug)]
#[command(name = "corral", version, about = "Supervise worker fleets that share one PostgreSQL connection budget")]
pub struct Cli {
    /// Manifest file [default: $CORRAL_CONFIG, ./supervisor.toml, /etc/corral/supervisor.toml]
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control socket [default: from the config, else $CORRAL_SOCKET]
    #[arg(short = 's', long = "socket", global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the supervisor in the foreground (PID 1 ok)
    Run,
    /// Validate the config and print the jobs and budget plan (exit 0 ok, 2 invalid)
    Check {
        #[arg(long)]
        json: bool,
        /// Also connect: report TLS and the limit that binds (server, pooler, preset)
        #[arg(long)]
        online: bool,
    },
    /// One line per job
    Status {
        jobs: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Start jobs (also clears FATAL)
    Start {
        #[arg(required = true)]
        jobs: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop jobs gracefully (stop_signal, then SIGKILL after stop_timeout)
    Stop {
        #[arg(required = true)]
        jobs: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop, then start jobs
    Restart {
        #[arg(required = true)]
        jobs: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Re-read the config file and apply the difference
    Reload {
        /// Print the difference without applying it
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Recent output of a job
    Logs {
        job: String,
        /// Number of lines
        #[arg(short = 'n', default_value_t = 20)]
        lines: usize,
        /// Keep printing new lines until interrupted
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// The connection budget: limit, reserves, quotas, live use
    Budget {
        #[arg(long)]
        json: bool,
    },
    /// Reserve connections for something outside corral
    Reserve {
        name: String,
        #[arg(short = 'n', value_name = "COUNT")]
        count: u32,
        /// Expire after this long (e.g. 30m)
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        #[arg(long)]
        json: bool,
    },
    /// Release a reservation
    Release {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when supervisor and database are healthy
    Health {
        #[arg(long)]
        json: bool,
    },
    /// Stop all jobs, then the supervisor exits 0
    Shutdown {
        #[arg(long)]
        json: bool,
    },
}

/// Run a client command; returns the exit code.
pub fn run_client(cli: &Cli) -> i32 {
    let config_path = cli.config.clone().unwrap_or_else(config::default_path);
    let (request, json) = match &cli.command {
        Command::Run => unreachable!("run is handled by main"),
        Command::Check { json, online } => return check::run(&config_path, *json, *online),
        Command::Status { jobs, json } => (Request::Status { jobs: jobs.clone() }, *json),
        Command::Start { jobs, json } => (Request::Start { jobs: jobs.clone() }, *json),
        Command::Stop { jobs, json } => (Request::Stop { jobs: jobs.clone() }, *json),
        Command::Restart { jobs, json } => (Request::Restart { jobs: jobs.clone() }, *json),
        Command::Reload { dry_run, json } => (Request::Reload { dry_run: *dry_run }, *json),
        Command::Logs { job, lines, follow, json } => {
            (Request::Logs { job: job.clone(), lines: *lines, follow: *follow }, *json)
        }
        Command::Budget { json } => (Request::Budget, *json),
        Command::Reserve { name, count, ttl, json } => {
            (Request::Reserve { name: name.clone(), count: *count, ttl_s: ttl.map(|d| d.as_secs_f64()) }, *json)
        }
        Command::Release { name, json } => (Request::Release { name: name.clone() }, *json),
        Command::Health { json } => (Request::Health, *json),
        Command::Shutdown { json } => (Request::Shutdown, *json),
    };
    let socket = client_socket(cli.socket.as_deref(), &config_path);
    let result = client::call(&socket, &request, |resp| {
        // Streamed log lines arrive one response at a time.
        render::response(&request, resp, json);
    });
    match result {
        Err(e) => {
            eprintln!("error: no corral answers on {}: {e}", socket.display());
            eprintln!("  hint: start one with `corral run`, or point to its socket with -s PATH or $CORRAL_SOCKET");
            EXIT_NO_DAEMON
        }
        Ok(last) => exit_code(&request, &last),
    }
}

fn exit_code(request: &Request, resp: &Response) -> i32 {
    if resp.ok {
        return match (request, &resp.result) {
            (Request::Health, Some(Reply::Health(h))) if !h.healthy => EXIT_REFUSED,
            _ => EXIT_OK,
        };
    }
    match resp.error.as_ref().map(|e| e.kind) {
        Some(ErrorKind::Config) | Some(ErrorKind::BadRequest) => EXIT_USAGE,
        _ => EXIT_REFUSED,
    }
}

/// The socket a client talks to: `-s`, else the config's, else `$CORRAL_SOCKET`.
fn client_socket(flag: Option<&Path>, config_path: &Path) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = config::socket_hint(config_path) {
        return p;
    }
    if let Some(p) = std::env::var_os("CORRAL_SOCKET") {
        return PathBuf::from(p);
    }
    PathBuf::from(crate::protocol::DEFAULT_SOCKET)
}
