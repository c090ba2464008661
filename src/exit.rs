//! How a program runs and ends: its runtime, exit status and last words.

use std::future::Future;

/// Runs a program's `main` on a single-threaded tokio runtime (the
/// gateway's work is I/O; one thread saves the hand-offs), then exits
/// with its outcome (see [`finish`]).
pub fn run_main(program: impl Future<Output = anyhow::Result<()>>) -> ! {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    match runtime {
        Ok(rt) => finish(rt.block_on(program)),
        Err(e) => finish(Err(anyhow::anyhow!("cannot start the tokio runtime: {e}"))),
    }
}

/// The exit status of a program that cannot start as configured: a bad
/// flag or setting, an unreadable or invalid certificate, key or node
/// database. (clap exits with it for a bad command line too.)
pub const CONFIG_EXIT: i32 = 2;

/// The exit status of a failure at run time (and of the errors SPEC
/// gives status 1, such as configure-queue's unknown peer).
pub const RUNTIME_EXIT: i32 = 1;

/// A configuration error (see [`CONFIG_EXIT`]).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ConfigError(#[from] pub anyhow::Error);

/// Marks an error as a configuration error.
pub fn config(e: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(ConfigError(e.into()))
}

/// Ends the process with the outcome of a program: 0, or the error on
/// stderr and [`CONFIG_EXIT`] or [`RUNTIME_EXIT`]. Exiting here, rather
/// than returning from `main`, keeps the runtime's teardown from racing
/// the tasks still running.
pub fn finish(result: anyhow::Result<()>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("Error: {e:#}");
            let code = if e.is::<ConfigError>() {
                CONFIG_EXIT
            } else {
                RUNTIME_EXIT
            };
            std::process::exit(code)
        }
    }
}
