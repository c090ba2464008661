//! `swpt-probe [PATH]`: the container's health check. Asks this host's
//! probes (`http://127.0.0.1:$APP_HTTP_PORT/PATH`, `/readyz` by default)
//! and exits 0 on 200, 1 otherwise, saying why; the image needs no curl.

use std::ffi::OsString;
use std::time::Duration;

/// How long the probe waits for an answer, in all.
const WITHIN: Duration = Duration::from_secs(3);

/// Runs the program with its command line (`args[0]` its name).
pub fn main(args: Vec<OsString>) -> ! {
    let path = args.get(1).map(|a| a.to_string_lossy().into_owned());
    if path.as_deref() == Some("--version") {
        println!("swpt-probe {}", crate::VERSION);
        std::process::exit(0);
    }
    let path = path.unwrap_or_else(|| "/readyz".to_string());
    crate::exit::run_main(async move {
        let port = std::env::var("APP_HTTP_PORT")
            .map_err(|_| anyhow::anyhow!("APP_HTTP_PORT is not set: the probes are off"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| anyhow::anyhow!("APP_HTTP_PORT is not a port number: {port:?}"))?;
        let (status, body) = tokio::time::timeout(WITHIN, crate::http::get(port, &path))
            .await
            .map_err(|_| anyhow::anyhow!("no answer from 127.0.0.1:{port}{path} within {WITHIN:?}"))??;
        match status {
            200 => Ok(()),
            _ => anyhow::bail!("{path}: {status} {}", body.trim()),
        }
    })
}
