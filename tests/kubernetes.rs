//! The Kubernetes base (`deploy/kubernetes/`) checked against the real
//! binaries: every file kustomize lists parses; every container runs one
//! of our programs with flags its `--help` names and settings it reads;
//! probes point at the HTTP port and paths the programs serve; the grace
//! period covers the drain; node data is mounted read-only and the key
//! comes from a Secret; the PodDisruptionBudget and the anti-affinity
//! select the server's pods.

mod common;

use common::bin;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn load(file: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn s(y: &Yaml) -> &str {
    y.as_str().unwrap_or("")
}

/// Every document of every resource the kustomization lists.
fn resources() -> Vec<Yaml> {
    let k = &load(&base().join("kustomization.yaml"))[0];
    assert_eq!(s(&k["kind"]), "Kustomization");
    let files = k["resources"].as_vec().expect("resources");
    assert!(!files.is_empty());
    files.iter().flat_map(|f| load(&base().join(s(f)))).collect()
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    docs.iter().filter(|d| s(&d["kind"]) == kind).collect()
}

/// `--help` of a program: the flags and the variables it names.
fn help(program: &str) -> String {
    let out = std::process::Command::new(bin(program))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{program} --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The settings the programs read from the environment only (APP_*), as
/// development.env lists them.
fn internal_settings() -> HashSet<String> {
    let env = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("development.env")).unwrap();
    env.lines()
        .map(|l| l.trim_start_matches('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .filter(|k| k.starts_with("APP_"))
        .collect()
}

/// The config map's data, by name.
fn config_maps(docs: &[Yaml]) -> HashMap<String, HashMap<String, String>> {
    of_kind(docs, "ConfigMap")
        .into_iter()
        .map(|c| {
            let data = c["data"]
                .as_hash()
                .unwrap()
                .iter()
                .map(|(k, v)| (s(k).to_string(), s(v).to_string()))
                .collect();
            (s(&c["metadata"]["name"]).to_string(), data)
        })
        .collect()
}

/// A container's environment: its config maps' data and its own `env`.
fn container_env(c: &Yaml, maps: &HashMap<String, HashMap<String, String>>) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for from in c["envFrom"].as_vec().into_iter().flatten() {
        let name = s(&from["configMapRef"]["name"]);
        if !name.is_empty() {
            let data = maps.get(name).unwrap_or_else(|| panic!("no ConfigMap {name}"));
            env.extend(data.clone());
        }
    }
    for e in c["env"].as_vec().into_iter().flatten() {
        env.insert(s(&e["name"]).to_string(), s(&e["value"]).to_string());
    }
    env
}

fn workloads(docs: &[Yaml]) -> Vec<&Yaml> {
    let mut w = of_kind(docs, "Deployment");
    w.extend(of_kind(docs, "StatefulSet"));
    assert!(!w.is_empty(), "no workloads");
    w
}

fn containers(pod: &Yaml) -> Vec<&Yaml> {
    let mut all: Vec<&Yaml> = pod["containers"].as_vec().unwrap().iter().collect();
    all.extend(pod["initContainers"].as_vec().into_iter().flatten());
    all
}

#[test]
fn containers_run_our_programs_with_their_real_flags_and_settings() {
    let docs = resources();
    let maps = config_maps(&docs);
    let internal = internal_settings();
    let mut seen = HashSet::new();
    // A shared ConfigMap's keys must each be read by one of its users.
    let mut map_readers: HashMap<String, Vec<String>> = HashMap::new();
    let ours = |name: &str| ["SWPT_", "APP_", "PROTOCOL_"].iter().any(|p| name.starts_with(p));
    for w in workloads(&docs) {
        for c in containers(&w["spec"]["template"]["spec"]) {
            let args: Vec<&str> = c["args"].as_vec().unwrap().iter().map(s).collect();
            let program = args[0];
            assert!(
                ["swpt-server", "swpt-client", "swpt-drainer", "configure-queue"].contains(&program),
                "{program}"
            );
            seen.insert(program.to_string());
            let help = help(program);
            let reads = |name: &str| help.contains(&format!("env: {name}")) || internal.contains(name);
            for flag in args.iter().filter(|a| a.starts_with("--")) {
                let name = flag.split('=').next().unwrap();
                assert!(help.contains(name), "{program} has no {name}:\n{help}");
            }
            for e in c["env"].as_vec().into_iter().flatten() {
                let name = s(&e["name"]);
                assert!(!ours(name) || reads(name), "{program} does not read {name}");
            }
            for from in c["envFrom"].as_vec().into_iter().flatten() {
                let map = s(&from["configMapRef"]["name"]);
                if let Some(data) = maps.get(map) {
                    let readers = map_readers.entry(map.to_string()).or_default();
                    readers.extend(data.keys().filter(|k| reads(k)).cloned());
                }
            }
        }
    }
    for (map, data) in &maps {
        for key in data.keys().filter(|k| ours(k)) {
            assert!(
                map_readers.get(map).is_some_and(|r| r.contains(key)),
                "no program reads {key} of ConfigMap {map}"
            );
        }
    }
    assert!(seen.contains("swpt-server") && seen.contains("swpt-client") && seen.contains("configure-queue"));
}

/// The value of `--flag=V` in `args`, or of `var` in the environment.
fn setting(args: &[&str], flag: &str, env: &HashMap<String, String>, var: &str) -> Option<String> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")).map(str::to_string))
        .or_else(|| env.get(var).cloned())
}

#[test]
fn probes_ports_grace_and_volumes_match_the_programs() {
    let docs = resources();
    let maps = config_maps(&docs);
    for w in workloads(&docs) {
        let pod = &w["spec"]["template"]["spec"];
        let volumes: HashMap<&str, &Yaml> = pod["volumes"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|v| (s(&v["name"]), v))
            .collect();
        for c in pod["containers"].as_vec().unwrap() {
            let args: Vec<&str> = c["args"].as_vec().unwrap().iter().map(s).collect();
            let env = container_env(c, &maps);
            let ports: HashMap<&str, i64> = c["ports"]
                .as_vec()
                .unwrap()
                .iter()
                .map(|p| (s(&p["name"]), p["containerPort"].as_i64().unwrap()))
                .collect();
            let http: i64 = setting(&args, "--http-port", &env, "APP_HTTP_PORT")
                .expect("the HTTP port is set")
                .parse()
                .unwrap();
            assert_eq!(ports.get("http"), Some(&http), "{}: the http port", args[0]);
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                let p = &c[probe]["httpGet"];
                if p.is_badvalue() {
                    continue;
                }
                assert!(["/healthz", "/readyz"].contains(&s(&p["path"])), "{probe}");
                assert_eq!(ports.get(s(&p["port"])), Some(&http), "{probe} port");
            }
            assert_eq!(
                s(&c["livenessProbe"]["httpGet"]["path"]),
                "/healthz",
                "{}",
                args[0]
            );
            if args[0] == "swpt-server" {
                assert_eq!(s(&c["readinessProbe"]["httpGet"]["path"]), "/readyz");
                let stomp = setting(&args, "--server-port", &env, "SWPT_SERVER_PORT").unwrap();
                assert_eq!(ports.get("stomp"), Some(&stomp.parse().unwrap()));
            }
            // The orchestrator waits longer than the program's drain.
            let grace: f64 = env
                .get("APP_SHUTDOWN_GRACE_SECONDS")
                .map_or(15.0, |g| g.parse().unwrap());
            let pod_grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30) as f64;
            assert!(pod_grace > grace, "{}: {pod_grace} <= {grace}", args[0]);
            // Node data read-only; the key from a Secret.
            let nodedata = env["SWPT_NODEDATA_URL"].trim_start_matches("file://").to_string();
            let key = env["SWPT_SERVER_KEY"].clone();
            for m in c["volumeMounts"].as_vec().unwrap() {
                let path = s(&m["mountPath"]);
                let volume = volumes[s(&m["name"])];
                if nodedata.starts_with(path) {
                    assert_eq!(m["readOnly"].as_bool(), Some(true), "node data read-only");
                    assert_eq!(volume["persistentVolumeClaim"]["readOnly"].as_bool(), Some(true));
                }
                if key.starts_with(path) {
                    assert!(
                        !volume["secret"]["secretName"].is_badvalue(),
                        "the key from a Secret"
                    );
                    // A non-root user reads the Secret's files through its group.
                    assert!(pod["securityContext"]["fsGroup"].as_i64().is_some(), "fsGroup");
                }
            }
        }
    }
}

#[test]
fn the_disruption_budget_and_anti_affinity_select_the_server() {
    let docs = resources();
    let server = of_kind(&docs, "Deployment")
        .into_iter()
        .find(|d| {
            containers(&d["spec"]["template"]["spec"])
                .iter()
                .any(|c| s(&c["args"][0]) == "swpt-server")
        })
        .expect("a server Deployment");
    let labels = &server["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Yaml| {
        let m = selector["matchLabels"].as_hash().unwrap();
        !m.is_empty() && m.iter().all(|(k, v)| labels[s(k)] == *v)
    };
    assert!(selects(&server["spec"]["selector"]));
    let pdbs = of_kind(&docs, "PodDisruptionBudget");
    assert!(
        pdbs.iter().any(|p| selects(&p["spec"]["selector"])),
        "a PDB for the server"
    );
    let anti = &server["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
    let terms = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_vec()
        .unwrap();
    assert!(terms
        .iter()
        .any(|t| selects(&t["podAffinityTerm"]["labelSelector"])));
    let service = of_kind(&docs, "Service")[0];
    let m = service["spec"]["selector"].as_hash().unwrap();
    assert!(
        m.iter().all(|(k, v)| labels[s(k)] == *v),
        "the Service selects the server"
    );
}

#[test]
fn the_resources_pass_a_kubernetes_schema_validator() {
    // scripts/test installs kubernetes-validate (PyPI) and names it here.
    let Some(validator) = std::env::var_os("SWPT_KUBERNETES_VALIDATE") else {
        swpt_testkit::skip(
            "the_resources_pass_a_kubernetes_schema_validator",
            "SWPT_KUBERNETES_VALIDATE is not set (scripts/test installs kubernetes-validate)",
        );
        return;
    };
    let k = &load(&base().join("kustomization.yaml"))[0];
    let files: Vec<PathBuf> = k["resources"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|f| base().join(s(f)))
        .collect();
    let out = std::process::Command::new(validator)
        .arg("--strict")
        .args(&files)
        .output()
        .expect("kubernetes-validate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" passed ").count(), files.len(), "{text}");
}
