//! Tests against real images made by e2fsprogs, refusals, and random mutations.

mod images;
mod mutation;
mod oracle;
mod patch;
mod refusals;
