//! Readings from /proc: CPU time of a process or a process tree, RSS, PostgreSQL's postmaster,
//! the machine's cores, CPU model, load and open-files limit.

use std::path::Path;
use std::time::Instant;

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
pub(crate) const TICKS_PER_S: f64 = 100.0;

/// Fields of /proc/<pid>/stat after the command name (index 0 is the state).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// utime + stime of a process (all its threads), in ticks; 0 when it is gone.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    stat_fields(pid).map_or(0, |f| f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0))
}

/// utime + stime of `parent` and of its live children, in ticks (a PostgreSQL cluster: the
/// postmaster and its backends, walsenders and background workers).
pub(crate) fn tree_cpu_ticks(parent: u32) -> u64 {
    let mut total = cpu_ticks(parent);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(f) = stat_fields(pid) {
                if f.get(1).copied() == Some(u64::from(parent)) {
                    total += f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0);
                }
            }
        }
    }
    total
}

/// Resident set size of a process in KiB (VmRSS); 0 when it is gone.
pub(crate) fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The postmaster's pid, from the data directory.
pub(crate) fn postmaster_pid(pgdata: &Path) -> Option<u32> {
    std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// CPU time of the processes a bench watches, read at one moment.
#[derive(Debug, Clone)]
pub(crate) struct CpuSnapshot {
    at: Instant,
    ticks: Vec<u64>,
}

/// What a bench watches: (label, pid, include live children).
pub(crate) struct CpuWatch {
    pub(crate) procs: Vec<(&'static str, u32, bool)>,
}

impl CpuWatch {
    /// The server, the load generator, PostgreSQL (the postmaster and its children) and this
    /// process, labelled `me`, which runs the SQL writers.
    pub(crate) fn with_writers(
        server: u32,
        loadgen: u32,
        postmaster: u32,
        me: &'static str,
    ) -> CpuWatch {
        CpuWatch {
            procs: vec![
                ("server", server, false),
                ("load generator", loadgen, false),
                ("PostgreSQL", postmaster, true),
                (me, std::process::id(), false),
            ],
        }
    }

    pub(crate) fn snapshot(&self) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            ticks: self
                .procs
                .iter()
                .map(|&(_, pid, tree)| {
                    if tree {
                        tree_cpu_ticks(pid)
                    } else {
                        cpu_ticks(pid)
                    }
                })
                .collect(),
        }
    }

    /// CPU use between two snapshots, per process, in % of one core.
    pub(crate) fn percent(&self, from: &CpuSnapshot, to: &CpuSnapshot) -> Vec<(&'static str, f64)> {
        let secs = to.at.duration_since(from.at).as_secs_f64().max(1e-9);
        self.procs
            .iter()
            .zip(from.ticks.iter().zip(to.ticks.iter()))
            .map(|(&(label, _, _), (a, b))| {
                (
                    label,
                    b.saturating_sub(*a) as f64 / TICKS_PER_S / secs * 100.0,
                )
            })
            .collect()
    }
}

/// CPU time of the whole machine from the first line of /proc/stat, to see how much of it
/// other processes (other engineers' builds) and the hypervisor (steal) took meanwhile.
pub(crate) struct MachineCpu {
    at: Instant,
    /// user + nice + system + irq + softirq ticks.
    busy: u64,
    steal: u64,
}

/// Machine CPU over an interval, in % of one core.
pub(crate) struct MachineUse {
    pub(crate) busy: f64,
    pub(crate) steal: f64,
}

impl MachineCpu {
    pub(crate) fn now() -> MachineCpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
        MachineCpu {
            at: Instant::now(),
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            steal: field(7),
        }
    }

    pub(crate) fn since(&self, start: &MachineCpu) -> MachineUse {
        let secs = self.at.duration_since(start.at).as_secs_f64().max(1e-9);
        let pct = |ticks: u64| ticks as f64 / TICKS_PER_S / secs * 100.0;
        MachineUse {
            busy: pct(self.busy.saturating_sub(start.busy)),
            steal: pct(self.steal.saturating_sub(start.steal)),
        }
    }
}

impl MachineUse {
    /// Appends `others` (the machine's busy time and steal not spent by the watched
    /// processes) and `steal` to a per-process CPU list; returns `others`.
    pub(crate) fn append_to(&self, cpu: &mut Vec<(&'static str, f64)>) -> f64 {
        let watched: f64 = cpu.iter().map(|(_, pct)| pct).sum();
        let others = (self.busy + self.steal - watched).max(0.0);
        cpu.push(("others", others));
        cpu.push(("steal", self.steal));
        others
    }
}

pub(crate) fn format_cpu(cpu: &[(&str, f64)]) -> String {
    cpu.iter()
        .map(|(label, pct)| format!("{label} {pct:.0}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Cores available to us and the CPU model from /proc/cpuinfo.
pub(crate) fn cores_and_cpu() -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    (cores, cpu)
}

/// Cores available to us, the CPU model and the memory.
pub(crate) fn machine() -> String {
    let (cores, cpu) = cores_and_cpu();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or_else(String::new, |kb| {
            format!(", {:.0} GiB RAM", kb as f64 / 1048576.0)
        });
    format!("{cores} cores, {cpu}{mem}")
}

/// The soft limit on open files of this process (inherited by the server and load generator).
pub(crate) fn open_files_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
}

/// The `machine:` line a bench of the server prints after its first: the machine, the load
/// average and the open files limit.
pub(crate) fn print_machine() {
    println!(
        "machine: {}; load average at start: {}; open files limit: {}",
        machine(),
        loadavg(),
        open_files_limit().map_or_else(|| "?".into(), |n| n.to_string())
    );
}
