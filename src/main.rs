//! netcage: parse the command line, run one handler, print any error as one line, exit.

mod cli;
#[cfg(test)]
#[path = "fuzz.rs"]
mod fuzz;

use std::process::ExitCode;

use clap::Parser;

/// glibc's malloc with large blocks on cache lines: see [`netcage::allocator`].
#[global_allocator]
static ALLOCATOR: netcage::allocator::LineAligned = netcage::allocator::LineAligned;

fn main() -> ExitCode {
    netcage::timing::mark("main");
    // The sandbox holder (exec'd by netcage itself for a library's or serve's Tier 1 sandbox)
    // skips building the command-line parser.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.len() == 1 && args[0] == "__holder" {
        let code = netcage::sandbox::holder::holder_main(None);
        netcage::timing::mark("exit");
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    // `run`'s sandbox holder is forked before the parser is built (or anything else is read).
    if args.first().is_some_and(|a| a == "run")
        && !cli::run::asks_for_tier0(&args[1..])
        && let Some(code) = cli::run::prestart()
    {
        // This is the forked sandbox holder, and it is done.
        netcage::timing::mark("exit");
        return ExitCode::from(code);
    }
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(code) => {
            netcage::timing::mark("exit");
            ExitCode::from(code)
        }
        Err(err) => {
            let msg = format!("{err:#}").replace('\n', " ");
            eprintln!("netcage: {msg}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
