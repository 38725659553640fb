//! Library side of `ferry-perf`: test and benchmark tooling shared by the binaries and by
//! tests elsewhere in the workspace.
//!
//! * [`wan`]: a TCP proxy that emulates a slow, long link (one-way delay, a rate shared by
//!   all connections, seeded faults), for hosts whose kernel has no netem.

pub mod wan;
