//! `APP_CPU_AFFINITY`: pins a process's threads to a list of CPUs.

/// Parses a CPU list such as `0`, `1,3` or `0-2`.
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b || b >= libc::CPU_SETSIZE as usize {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => {
                let c: usize = part.parse().ok()?;
                if c >= libc::CPU_SETSIZE as usize {
                    return None;
                }
                cpus.push(c);
            }
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// Applies `APP_CPU_AFFINITY` (a CPU list) to the calling thread, so that
/// the threads it starts afterwards (tokio's workers) share its CPUs.
/// On a small machine shared with RabbitMQ, keeping the gateway's threads
/// on one CPU saves the cross-CPU wake-ups that dominate its cost.
pub fn apply_from_env() -> anyhow::Result<()> {
    let Ok(list) = std::env::var("APP_CPU_AFFINITY") else {
        return Ok(());
    };
    if list.trim().is_empty() {
        return Ok(());
    }
    let cpus = parse_cpu_list(&list)
        .ok_or_else(|| anyhow::anyhow!("APP_CPU_AFFINITY: invalid CPU list '{list}' (e.g. 0, 1,3 or 0-2)"))?;
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET is given
    // numbers below CPU_SETSIZE (checked above); pid 0 is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in &cpus {
            libc::CPU_SET(*cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            anyhow::bail!("APP_CPU_AFFINITY={list}: {}", std::io::Error::last_os_error());
        }
    }
    tracing::info!("pinned to CPU(s) {list}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_cpu_list;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list("0,2"), Some(vec![0, 2]));
        assert_eq!(parse_cpu_list("0-2, 5"), Some(vec![0, 1, 2, 5]));
        for bad in ["", "x", "2-1", "1,", "-1", "99999"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad}");
        }
    }
}
