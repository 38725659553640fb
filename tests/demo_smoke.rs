//! `ferry demo` runs a complete local migration and verifies it.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn demo_runs_and_verifies() {
    if ServerKind::from_env() == ServerKind::Reference {
        eprintln!("NOTE: FERRY_TEST_SERVER=qemu-nbd: `ferry demo` has no reference; not run");
        return;
    }
    let dir = test_dir("demo");
    let d = dir.path().to_str().unwrap();
    let out = run_timeout(
        Command::new(FERRY).args(["demo", "--size", "64M", "--dir", d]),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "ferry demo failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout_of(&out),
        stderr_of(&out)
    );
    assert!(
        stdout_of(&out).lines().any(|l| l.contains("verified")),
        "ferry demo printed no `verified` line:\n{}",
        stdout_of(&out)
    );
}
