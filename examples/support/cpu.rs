//! CPU time of a process, from `/proc`, for the benchmarks' CPU-per-operation figures.

use std::process::Command;
use std::time::Duration;

use anyhow::Context;

/// CPU time (user + system) of a process so far.
pub fn cpu_time(pid: u32, ticks_per_second: f64) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) start with field 3, `state`.
    let fields: Vec<&str> = stat.rsplit_once(')').context("/proc/PID/stat")?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(Duration::from_secs_f64((utime + stime) as f64 / ticks_per_second))
}

pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}
