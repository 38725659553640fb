//! Start-up probe (rule 9): is io_uring usable here, and if not, why and how to allow it.

use std::io;

use io_uring::{opcode, IoUring};

use super::RuntimeError;

const SECCOMP_HINT: &str = "likely cause: the syscall is blocked by a seccomp profile (e.g. a \
    container runtime's default); allow io_uring_setup/io_uring_enter/io_uring_register";

/// Checks that io_uring works here with the features and opcodes the runtime uses.
pub fn probe() -> Result<(), RuntimeError> {
    let ring = IoUring::new(4).map_err(diagnose)?;
    if !ring.params().is_feature_nodrop() {
        return Err(RuntimeError::MissingFeature("IORING_FEAT_NODROP".into()));
    }
    let mut p = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| RuntimeError::MissingFeature(format!("IORING_REGISTER_PROBE ({e})")))?;
    let needed = [
        ("READ", opcode::Read::CODE),
        ("WRITE", opcode::Write::CODE),
        ("READ_FIXED", opcode::ReadFixed::CODE),
        ("WRITE_FIXED", opcode::WriteFixed::CODE),
        ("FSYNC", opcode::Fsync::CODE),
        ("FALLOCATE", opcode::Fallocate::CODE),
        ("RECV", opcode::Recv::CODE),
        ("SEND", opcode::Send::CODE),
        ("ACCEPT", opcode::Accept::CODE),
        ("CONNECT", opcode::Connect::CODE),
        ("TIMEOUT", opcode::Timeout::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
        ("CLOSE", opcode::Close::CODE),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(_, code)| !p.is_supported(*code))
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(RuntimeError::MissingFeature(format!(
            "opcodes {}",
            missing.join(", ")
        )));
    }
    Ok(())
}

/// Turns an `io_uring_setup` failure into an error that says which obstacle it is.
pub(crate) fn diagnose(e: io::Error) -> RuntimeError {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    diagnose_with(e, sysctl)
}

fn diagnose_with(e: io::Error, sysctl: Option<u32>) -> RuntimeError {
    let reason = match (e.raw_os_error(), sysctl) {
        (Some(libc::EPERM | libc::ENOSYS), Some(2)) => {
            "io_uring is disabled system-wide (kernel.io_uring_disabled = 2); \
             run `sysctl -w kernel.io_uring_disabled=0` to allow it"
                .to_string()
        }
        (Some(libc::EPERM | libc::ENOSYS), Some(1)) => {
            "io_uring is restricted (kernel.io_uring_disabled = 1): only members of \
             kernel.io_uring_group may use it; add this user to that group or set the sysctl to 0"
                .to_string()
        }
        (Some(libc::EPERM | libc::ENOSYS), Some(0)) => {
            format!("io_uring_setup failed although kernel.io_uring_disabled = 0; {SECCOMP_HINT}")
        }
        (Some(libc::ENOSYS), None) => format!(
            "io_uring_setup is not implemented: the kernel lacks CONFIG_IO_URING, or {SECCOMP_HINT}"
        ),
        (Some(libc::EPERM), None) => format!("io_uring_setup was refused; {SECCOMP_HINT}"),
        (Some(libc::ENOMEM), _) => {
            "io_uring_setup ran out of memory (RLIMIT_MEMLOCK on kernels before 5.12?)".to_string()
        }
        _ => {
            return RuntimeError::Setup {
                what: "io_uring_setup".into(),
                source: e,
            }
        }
    };
    RuntimeError::Unavailable { reason, source: e }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_passes_here() {
        probe().expect("io_uring is available on the dev machine");
    }

    #[test]
    fn diagnosis_names_the_obstacle() {
        let msg =
            |errno, sysctl| diagnose_with(io::Error::from_raw_os_error(errno), sysctl).to_string();
        assert!(msg(libc::EPERM, Some(0)).contains("seccomp"));
        assert!(msg(libc::EPERM, Some(0)).contains("io_uring_enter"));
        assert!(msg(libc::ENOSYS, Some(2)).contains("io_uring_disabled = 2"));
        assert!(msg(libc::EPERM, Some(1)).contains("io_uring_group"));
        assert!(msg(libc::ENOSYS, None).contains("CONFIG_IO_URING"));
        assert!(matches!(
            diagnose_with(io::Error::from_raw_os_error(libc::EINVAL), Some(0)),
            RuntimeError::Setup { .. }
        ));
    }
}
