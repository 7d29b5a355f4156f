//! `corral completions SHELL` and `corral man`: generated from the clap definitions in
//! [`super::Cli`], so they list exactly the verbs and flags this binary has.

use std::path::Path;

use clap::CommandFactory;

use super::{Cli, EXIT_OK, EXIT_USAGE};

pub fn completions(shell: clap_complete::Shell) -> i32 {
    clap_complete::generate(shell, &mut Cli::command(), "corral", &mut std::io::stdout());
    EXIT_OK
}

/// corral(1) on stdout; with `dir`, corral.1 and one corral-VERB.1 per verb there.
pub fn man(dir: Option<&Path>) -> i32 {
    let result = match dir {
        None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout().lock()),
        Some(dir) => std::fs::create_dir_all(dir).and_then(|_| clap_mangen::generate_to(Cli::command(), dir)),
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let target = dir.map(|d| d.display().to_string()).unwrap_or_else(|| "stdout".into());
            eprintln!("error: cannot write the man page to {target}: {e}");
            EXIT_USAGE
        }
    }
}
