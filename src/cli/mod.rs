//! The command line (SPEC §1): clap definitions and dispatch. No logic beyond
//! turning arguments into a request and a reply into an exit code; printing
//! lives in `render`, the socket in `client`.

pub(crate) mod check;
mod client;
mod docs;
pub mod render;
mod top;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config;
use crate::protocol::{ErrorKind, Reply, Request, Response};

/// Exit codes shared by every client command (SPEC §1).
pub const EXIT_OK: i32 = 0;
pub const EXIT_REFUSED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_NO_DAEMON: i32 = 3;

/// The end of `--help` and the man page.
const AFTER_HELP: &str = "\
Exit status of client commands: 0 done; 1 the supervisor refused (unknown job, job fatal, ...), \
reason on stderr; 2 usage or config error; 3 no supervisor answers on the socket. \
`corral health` exits 1 when the supervisor or the database is unhealthy.

Environment: CORRAL_CONFIG (the manifest), CORRAL_SOCKET (the control socket), CORRAL_LOG \
(corral's own log filter, e.g. debug), NO_COLOR (no colour even on a terminal). In the \
manifest, ${VAR} also reads the file named by VAR_FILE when VAR is unset (Docker secrets).

Files: ./supervisor.toml, else /etc/corral/supervisor.toml; /run/corral/corral.sock.";

#[derive(Parser, Debug)]
#[command(
    name = "corral",
    version,
    about = "Supervise worker fleets that share one PostgreSQL connection budget",
    after_long_help = AFTER_HELP
)]
pub struct Cli {
    /// Manifest file [default: $CORRAL_CONFIG, ./supervisor.toml, /etc/corral/supervisor.toml]
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control socket [default: from the config, else $CORRAL_SOCKET]
    #[arg(short = 's', long = "socket", global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Machine-readable output with stable field names (before or after the command)
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the supervisor in the foreground (PID 1 ok)
    Run,
    /// Validate the config and print the jobs and budget plan (exit 0 ok, 2 invalid)
    Check {
        /// Also connect: report TLS and the limit that binds (server, pooler, preset)
        #[arg(long)]
        online: bool,
    },
    /// One line per job
    Status { jobs: Vec<String> },
    /// Start jobs (also clears FATAL)
    Start {
        #[arg(required = true, value_name = "JOB|all")]
        jobs: Vec<String>,
    },
    /// Stop jobs gracefully (stop_signal, then SIGKILL after stop_timeout)
    Stop {
        #[arg(required = true, value_name = "JOB|all")]
        jobs: Vec<String>,
    },
    /// Stop, then start jobs
    Restart {
        #[arg(required = true, value_name = "JOB|all")]
        jobs: Vec<String>,
    },
    /// Send a signal to each job's main process (e.g. `corral signal layer1 HUP`)
    Signal {
        #[arg(required = true, value_name = "JOB|all")]
        jobs: Vec<String>,
        /// Name (HUP, SIGUSR1, ...) or number
        #[arg(value_name = "SIG")]
        signal: String,
    },
    /// Re-read the config file and apply the difference
    Reload {
        /// Print the difference without applying it
        #[arg(long)]
        dry_run: bool,
    },
    /// Recent output of a job, or of every job (each line with its job, stream and time)
    Logs {
        job: Option<String>,
        /// Number of lines [default: 20, or all kept lines with --since]
        #[arg(short = 'n')]
        lines: Option<usize>,
        /// Keep printing new lines until interrupted
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only lines since this long ago (10m, 2h) or since a time (2026-05-01T10:00:00Z)
        #[arg(long, value_name = "WHEN", value_parser = parse_since)]
        since: Option<f64>,
    },
    /// The connection budget: limit, reserves, quotas, live use
    Budget,
    /// Reserve connections for something outside corral
    Reserve {
        name: String,
        #[arg(short = 'n', value_name = "COUNT")]
        count: u32,
        /// Expire after this long (e.g. 30m)
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Release a reservation
    Release { name: String },
    /// Exit 0 when supervisor and database are healthy
    Health,
    /// Stop all jobs, then the supervisor exits 0
    Shutdown,
    /// Print a shell completion script: corral completions bash > /etc/bash_completion.d/corral
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into DIR
    Man {
        /// Write corral.1 and corral-<command>.1 here instead
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Live full-screen view of jobs and budget (q quits)
    Top,
}

/// `--since`: a duration back from now, or an RFC 3339 time. Unix seconds.
fn parse_since(s: &str) -> Result<f64, String> {
    let now = std::time::SystemTime::now();
    let at = match humantime::parse_duration(s) {
        Ok(d) => now.checked_sub(d).unwrap_or(std::time::UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(s)
            .map_err(|_| format!("{s:?} is neither a duration (10m, 2h) nor a time (2026-05-01T10:00:00Z)"))?,
    };
    Ok(at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0))
}

/// Run a client command; returns the exit code.
pub fn run_client(cli: &Cli) -> i32 {
    let config_path = cli.config.clone().unwrap_or_else(config::default_path);
    let json = cli.json;
    let request = match &cli.command {
        Command::Run => {
            // main runs the daemon itself; a client asked to `run` has nothing to send.
            eprintln!("error: `corral run` is the daemon, not a client verb");
            return EXIT_USAGE;
        }
        Command::Check { online } => return check::run(&config_path, json, *online),
        Command::Completions { shell } => return docs::completions(*shell),
        Command::Man { dir } => return docs::man(dir.as_deref()),
        Command::Status { jobs } => Request::Status { jobs: jobs.clone() },
        Command::Start { jobs } => Request::Start { jobs: jobs.clone() },
        Command::Stop { jobs } => Request::Stop { jobs: jobs.clone() },
        Command::Restart { jobs } => Request::Restart { jobs: jobs.clone() },
        Command::Signal { jobs, signal } => match crate::job::machine::parse_signal(signal) {
            Some(sig) => Request::Signal { jobs: jobs.clone(), signal: sig.as_str().to_string() },
            None => {
                eprintln!("error: unknown signal {signal:?}");
                eprintln!("  hint: use a name like HUP, SIGUSR1, TERM or a number (`kill -l` lists them)");
                return EXIT_USAGE;
            }
        },
        Command::Reload { dry_run } => Request::Reload { dry_run: *dry_run },
        Command::Logs { job, lines, follow, since } => Request::Logs {
            job: job.clone(),
            // With --since: everything since then, unless -n caps it.
            lines: lines.unwrap_or(if since.is_some() { usize::MAX } else { 20 }),
            follow: *follow,
            since: *since,
        },
        Command::Budget => Request::Budget,
        Command::Reserve { name, count, ttl } => {
            Request::Reserve { name: name.clone(), count: *count, ttl_s: ttl.map(|d| d.as_secs_f64()) }
        }
        Command::Release { name } => Request::Release { name: name.clone() },
        Command::Health => Request::Health,
        Command::Shutdown => Request::Shutdown,
        Command::Top => return top::run(&client_socket(cli.socket.as_deref(), &config_path)),
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
