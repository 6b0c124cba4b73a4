//! What the kernel says about a process and about the machine: CPU seconds, RSS and context switches from /proc.

use std::fs;

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User plus system CPU seconds of a process (all its threads), or 0 when it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// User and system (kernel) CPU seconds of a process (all its threads), or 0 when it is gone.
/// On loopback, a socket write's system time includes the receiving side's TCP processing.
pub fn cpu_split(pid: u32) -> (f64, f64) {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    split_of(&stat)
}

/// utime and stime of a `stat` file's text, in seconds.
fn split_of(stat: &str) -> (f64, f64) {
    // The command name may hold spaces; the fields after it are numbers.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return (0.0, 0.0);
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        ticks(11) as f64 / clock_ticks(),
        ticks(12) as f64 / clock_ticks(),
    )
}

/// User and system CPU seconds per thread name (threads of one name summed: a pool's workers),
/// empty when the process is gone.
pub fn cpu_by_thread(pid: u32) -> std::collections::BTreeMap<String, (f64, f64)> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.filter_map(Result::ok) {
        let (Ok(name), Ok(stat)) = (
            fs::read_to_string(task.path().join("comm")),
            fs::read_to_string(task.path().join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let (user, system) = split_of(&stat);
        let entry: &mut (f64, f64) = by_name.entry(name.trim().to_owned()).or_default();
        entry.0 += user;
        entry.1 += system;
    }
    by_name
}

/// Resident set size in bytes, or 0 when the process is gone.
pub fn rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// The anonymous part of the resident set (the heap and stacks, not mapped files), in bytes.
pub fn rss_anon_bytes(pid: u32) -> u64 {
    status_bytes(pid, "RssAnon:")
}

/// A `kB` field of /proc/PID/status in bytes, or 0.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Voluntary and involuntary context switches, summed over the process's threads.
pub fn context_switches(pid: u32) -> (u64, u64) {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    let mut total = (0, 0);
    for task in tasks.filter_map(Result::ok) {
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            let value = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            if let Some(n) = value("voluntary_ctxt_switches:") {
                total.0 += n;
            } else if let Some(n) = value("nonvoluntary_ctxt_switches:") {
                total.1 += n;
            }
        }
    }
    total
}

/// The file descriptors a process holds (its sockets included), or 0 when it is gone.
pub fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// Time the threads of a process have spent runnable but waiting for a CPU (the second field
/// of /proc/PID/task/TID/schedstat): time lost to other work on its cores. Threads come and go
/// (a runtime's blocking pool) and take their figures with them, so the meter sums each
/// thread's increments since it last looked.
pub struct RunQueueWait {
    pid: u32,
    last: std::collections::HashMap<std::ffi::OsString, u64>,
    total_ns: u64,
}

impl RunQueueWait {
    pub fn new(pid: u32) -> RunQueueWait {
        let mut meter = RunQueueWait {
            pid,
            last: Default::default(),
            total_ns: 0,
        };
        meter.seconds();
        meter.total_ns = 0;
        meter
    }

    /// Seconds waited since the meter was made.
    pub fn seconds(&mut self) -> f64 {
        let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return self.total_ns as f64 / 1e9;
        };
        let mut now = std::collections::HashMap::new();
        for task in tasks.filter_map(Result::ok) {
            let Some(waited) = fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            else {
                continue;
            };
            let tid = task.file_name();
            let before = self.last.get(&tid).copied().unwrap_or(0);
            self.total_ns += waited.saturating_sub(before);
            now.insert(tid, waited);
        }
        self.last = now;
        self.total_ns as f64 / 1e9
    }
}

/// CPU seconds of this process.
pub fn self_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id())
}

/// The machine, for the report: cores, CPU model, memory, kernel.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_gib: f64,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Machine {
        // The machine's, not this process's (which may be pinned to one core).
        // SAFETY: sysconf has no preconditions.
        nproc: usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1),
        cpu_model,
        mem_total_gib: mem_kb / 1024.0 / 1024.0,
        kernel,
    }
}

/// Pins this process (and the threads and children it creates from now on) to one core.
pub fn pin_self(core: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raises this process's open-file limit to the hard limit (children inherit it).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        limit.rlim_cur
    }
}

/// Asks the kernel for precise sleeps on this thread (the default slack is 50 µs).
pub fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// The latency of a 4 KiB write followed by `fdatasync` on the filesystem of `dir`, `count`
/// times: what every commit of the chat's store waits for. Returns (p50, p99, max) in ms.
pub fn fsync_latency(dir: &std::path::Path, count: usize) -> std::io::Result<(f64, f64, f64)> {
    use std::io::Write;
    fs::create_dir_all(dir)?;
    let path = dir.join("fsync-probe");
    let mut file = fs::File::create(&path)?;
    let block = [b'x'; 4096];
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        file.write_all(&block)?;
        let started = std::time::Instant::now();
        file.sync_data()?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    drop(file);
    let _ = fs::remove_file(&path);
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99), at(1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_threads_cpu_is_counted_under_its_name() {
        let busy = std::thread::Builder::new()
            .name("procfs-busy".into())
            .spawn(|| {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < std::time::Duration::from_millis(200) {
                    x = x.wrapping_mul(31).wrapping_add(1);
                }
                std::hint::black_box(x);
                cpu_by_thread(std::process::id())
            })
            .unwrap();
        let seen = busy.join().unwrap();
        let (user, sys) = seen.get("procfs-busy").copied().unwrap_or_default();
        assert!(user + sys >= 0.05, "{seen:?}");
    }
}
