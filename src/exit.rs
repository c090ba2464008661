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

/// Ends the process with the outcome of a program: 0, or 1 with the error
/// on stderr. Exiting here, rather than returning from `main`, keeps the
/// runtime's teardown from racing lapin's I/O thread (which would log
/// spurious errors after a clean shutdown).
pub fn finish(result: anyhow::Result<()>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::exit(1)
        }
    }
}
