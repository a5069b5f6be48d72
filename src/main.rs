//! netcage: parse the command line, run one handler, print any error as one line, exit.

mod cli;
#[cfg(test)]
#[path = "fuzz.rs"]
mod fuzz;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    netcage::timing::mark("main");
    // The sandbox holder (exec'd by netcage itself for every Tier 1 sandbox) is on the
    // start-up path of every `run`: it skips building the command-line parser.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "__holder") && args.next().is_none() {
        let code = netcage::sandbox::holder::holder_main();
        netcage::timing::mark("exit");
        return ExitCode::from(code.clamp(0, 255) as u8);
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
