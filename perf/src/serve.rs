//! Benchmark (b): serving a fully migrated volume, Ferry's frontend against qemu-nbd.
//!
//! Both servers export the same target file over a unix socket and are driven by the
//! same fio jobs through fio's nbd engine (libnbd), so client cost is identical. Runs
//! are interleaved job by job (ferry, qemu-nbd, then qemu-nbd, ferry in the next
//! repetition, so neither always goes first) to spread the shared machine's noise over
//! both; the report takes the median per metric. Both servers open the file with
//! O_DIRECT, so the page cache plays no part and is not dropped between these runs.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::ferry::VOLUME;
use crate::fio::{self, FioJob, FioRun};

/// One client workload of benchmark (b).
#[derive(Debug, Clone, Copy)]
pub struct ServeJob {
    pub key: &'static str,
    pub label: &'static str,
    pub rw: &'static str,
    pub bs: &'static str,
    pub iodepth: u32,
}

pub const JOBS: [ServeJob; 3] = [
    ServeJob {
        key: "rand4k-qd1",
        label: "4 KiB random read, iodepth 1",
        rw: "randread",
        bs: "4k",
        iodepth: 1,
    },
    ServeJob {
        key: "rand4k-qd32",
        label: "4 KiB random read, iodepth 32",
        rw: "randread",
        bs: "4k",
        iodepth: 32,
    },
    ServeJob {
        key: "seq1m-qd4",
        label: "1 MiB sequential read, iodepth 4",
        rw: "read",
        bs: "1M",
        iodepth: 4,
    },
];

/// An NBD server under test.
#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    pub socket: String,
}

impl Server {
    pub fn uri(&self) -> String {
        format!("nbd+unix:///{VOLUME}?socket={}", self.socket)
    }
}

pub fn fio_job(job: &ServeJob, uri: &str, runtime_s: u64) -> FioJob {
    FioJob::new(
        job.key,
        &[
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            &format!("--rw={}", job.rw),
            &format!("--bs={}", job.bs),
            &format!("--iodepth={}", job.iodepth),
            &format!("--runtime={runtime_s}"),
            "--time_based",
        ],
    )
}

/// Runs per job, per server (in `servers` order), per repetition.
pub type Runs = Vec<Vec<Vec<FioRun>>>;

pub fn run(servers: &[Server], runtime_s: u64, repeat: usize, work: &Path) -> Result<Runs> {
    let timeout = Duration::from_secs(runtime_s + 60);
    let mut runs: Runs = vec![vec![Vec::new(); servers.len()]; JOBS.len()];
    for rep in 0..repeat {
        for (j, job) in JOBS.iter().enumerate() {
            let mut order: Vec<usize> = (0..servers.len()).collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for s in order {
                let server = &servers[s];
                crate::progress(&format!(
                    "serve {} on {} (round {}/{repeat})",
                    job.key,
                    server.name,
                    rep + 1
                ));
                let tag = format!("{}-{}", server.name, rep + 1);
                let r = fio::run(
                    &fio_job(job, &server.uri(), runtime_s),
                    &tag,
                    work,
                    true,
                    timeout,
                )?;
                crate::progress(&format!(
                    "  {:.0} IOPS, {:.1} MiB/s, p50 {:.1} us",
                    r.iops,
                    r.bytes_per_s / (1 << 20) as f64,
                    r.latency.map_or(0.0, |l| l.latency_us_p50)
                ));
                runs[j][s].push(r);
            }
        }
    }
    Ok(runs)
}
