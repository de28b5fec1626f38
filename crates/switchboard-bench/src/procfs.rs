//! What the load generator reads about a process from /proc: RSS, CPU time, open files.

use std::fs;

/// Clock ticks per second of /proc/PID/stat times (`getconf CLK_TCK`; 100 on Linux x86/arm).
const CLK_TCK: f64 = 100.0;

/// Resident set size in KiB (`VmRSS` of /proc/PID/status).
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of the process (all threads), 10 ms resolution.
pub(crate) fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLK_TCK)
}

/// Number of open file descriptors (sockets included) of the process.
pub(crate) fn fd_count(pid: u32) -> Option<u64> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// The server process being measured, if its PID was given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Server {
    pub(crate) pid: Option<u32>,
}

impl Server {
    pub(crate) fn rss(&self) -> Option<u64> {
        self.pid.and_then(rss_kib)
    }
    pub(crate) fn cpu(&self) -> Option<f64> {
        self.pid.and_then(|p| cpu_secs(Some(p)))
    }
    pub(crate) fn fds(&self) -> Option<u64> {
        self.pid.and_then(fd_count)
    }
}
