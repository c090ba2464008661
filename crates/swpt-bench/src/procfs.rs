//! What /proc says of a process: its CPU time and peak RSS, its
//! current RSS, its context switches, and which process is the local
//! RabbitMQ (so that the broker's own CPU can be counted too).

/// (user + system CPU seconds, peak RSS in KiB) of `pid`.
pub fn proc_stats(pid: u32) -> (f64, u64) {
    let ticks = 100.0; // CLK_TCK on Linux x86-64
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let cpu = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (cpu / ticks, status_kib(pid, "VmHWM:"))
}

/// A KiB figure of `/proc/PID/status` (`field` with its colon), 0 when
/// it cannot be read.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Context switches (voluntary and not) of every thread of `pid` so far.
pub fn ctx_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// The local RabbitMQ's Erlang VM (`beam.smp`), when it runs on this
/// machine and its /proc entry is readable: its CPU time shows what the
/// broker spends on each path.
pub fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "beam.smp").then_some(pid)
    })
}

/// CPU seconds of the broker so far (0 when it is not local).
pub fn broker_cpu(pid: Option<u32>) -> f64 {
    pid.map(|p| proc_stats(p).0).unwrap_or(0.0)
}

/// The resident set of `pid` now, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// What a path has used so far: its process's CPU seconds and context
/// switches, and the broker's CPU seconds.
pub struct Usage {
    cpu: f64,
    switches: u64,
    broker: f64,
}

/// [`Usage`] per message between two readings: CPU µs, context switches.
pub struct PerMessage {
    pub cpu: f64,
    pub switches: f64,
    pub broker: f64,
}

impl Usage {
    /// Nothing used: what a process started during the measure is
    /// measured from.
    pub fn zero() -> Usage {
        Usage {
            cpu: 0.0,
            switches: 0,
            broker: 0.0,
        }
    }

    /// The usage of `pid` and of the broker (`broker`, when local) now.
    pub fn of(pid: u32, broker: Option<u32>) -> Usage {
        Usage {
            cpu: proc_stats(pid).0,
            switches: ctx_switches(pid),
            broker: broker_cpu(broker),
        }
    }

    /// What was used from `before` to `self`, per message of `count`.
    pub fn since(&self, before: &Usage, count: u64) -> PerMessage {
        let n = count.max(1) as f64;
        PerMessage {
            cpu: (self.cpu - before.cpu) * 1e6 / n,
            switches: self.switches.saturating_sub(before.switches) as f64 / n,
            broker: (self.broker - before.broker) * 1e6 / n,
        }
    }
}
