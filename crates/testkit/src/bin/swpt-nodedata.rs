//! `swpt-nodedata devnet DIR`: writes a local AA + CA + DA test network.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use swpt_testkit::generate::{write_devnet, Devnet, DevnetOptions};

const USAGE: &str = "\
Usage: swpt-nodedata devnet DIR [--host NAME] [--aa-port N] [--ca-port N] [--da-port N]
                                [--aa-id HEX8] [--extra-ca-peers N] [--no-deactivated]

Writes a consistent Swaptacular test network under DIR: node databases
aa/, ca/ and da/ (root CA, server certificate and key, peers with their
sub-CA certificates, manifests on 127.0.0.1 (or --host), subnet files and ACTIVE
markers), a deactivated peer for the AA and for the CA, and optionally
N extra creditors agents peering with the AA (under extra-ca/).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swpt-nodedata: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("devnet") => {}
        Some(other) => return Err(format!("unknown command '{other}'")),
        None => return Err("missing command".into()),
    }
    let (dir, opts) = devnet_args(it)?;
    let net = write_devnet(&dir, &opts).map_err(|e| e.to_string())?;
    print_devnet(&net, &dir);
    Ok(())
}

/// The DIR and the options of `devnet`.
fn devnet_args<'a>(mut it: impl Iterator<Item = &'a String>) -> Result<(PathBuf, DevnetOptions), String> {
    let mut dir: Option<PathBuf> = None;
    let mut opts = DevnetOptions::default();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        let port = |v: String, name: &str| {
            v.parse::<u16>()
                .map_err(|_| format!("{name}: invalid port '{v}'"))
        };
        match arg.as_str() {
            "--aa-port" => opts.aa_port = port(value(arg)?, arg)?,
            "--host" => opts.host = value(arg)?,
            "--ca-port" => opts.ca_port = port(value(arg)?, arg)?,
            "--da-port" => opts.da_port = port(value(arg)?, arg)?,
            "--aa-id" => {
                let v = value(arg)?;
                if v.len() != 8 || !v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(format!("--aa-id: '{v}' is not 8 lowercase hex digits"));
                }
                opts.aa_id = v;
            }
            "--extra-ca-peers" => {
                let v = value(arg)?;
                opts.extra_ca_peers = v
                    .parse()
                    .map_err(|_| format!("--extra-ca-peers: invalid number '{v}'"))?;
            }
            "--no-deactivated" => opts.deactivated = false,
            other if other.starts_with('-') => return Err(format!("unknown option '{other}'")),
            other => {
                if dir.replace(PathBuf::from(other)).is_some() {
                    return Err("only one DIR may be given".into());
                }
            }
        }
    }
    Ok((dir.ok_or("missing DIR")?, opts))
}

/// Says what was written where.
fn print_devnet(net: &Devnet, dir: &Path) {
    println!("AA {} in {}", net.aa_id, net.aa_dir.display());
    println!("CA {} in {}", net.ca_id, net.ca_dir.display());
    println!("DA {} in {}", net.da_id, net.da_dir.display());
    if let Some(id) = &net.deactivated_ca_id {
        println!("deactivated CA peer of the AA: {id}");
    }
    if let Some(id) = &net.deactivated_aa_id {
        println!("deactivated AA peer of the CA: {id}");
    }
    if !net.extra_cas.is_empty() {
        println!(
            "{} extra creditors agents under {}",
            net.extra_cas.len(),
            dir.join("extra-ca").display()
        );
    }
}
