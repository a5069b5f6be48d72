//! netcage: parse the command line, run one handler, print any error as one line, exit.

mod cli;
#[cfg(test)]
#[path = "fuzz.rs"]
mod fuzz;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let msg = format!("{err:#}").replace('\n', " ");
            eprintln!("netcage: {msg}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
