//! Which faults to inject: explicit positions and seeded random ones.
//!
//! Positions are byte offsets in the stream read from the sender of one direction of one
//! connection (connections numbered in accept order from 0). Where faults overlap, a cut
//! wins over everything after it and a drop wins over a corruption of the same byte.

use std::io;

use super::config::{invalid, Direction};

/// A byte position in one direction of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultAt {
    pub direction: Direction,
    /// Accept order, from 0.
    pub connection: usize,
    /// Offset in the stream read from the sender of `direction`.
    pub offset: u64,
}

/// The faults of a proxy. `Default` is none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Flip the byte at each position: XOR with a non-zero value derived from the seed.
    pub corrupt: Vec<FaultAt>,
    /// Close both sides of the connection once `offset` bytes have passed: the receiver
    /// gets exactly the bytes before `offset`, then EOF.
    pub cut: Vec<FaultAt>,
    /// Silently drop `len` bytes starting at the position (the stream desyncs).
    pub drop: Vec<(FaultAt, usize)>,
    /// Seeded random faults on every connection and direction.
    pub random: Option<RandomFaults>,
}

/// Random faults, drawn for every whole MiB of every connection-direction from the seed:
/// reproducible, and independent of timing and of how reads split the stream.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RandomFaults {
    /// Probability (0..=1) that a MiB block holds one corrupted byte, at a random offset.
    pub corrupt_per_mib: f64,
    /// Probability (0..=1) that the connection is cut within a MiB block.
    pub cut_per_mib: f64,
}

impl Faults {
    pub fn is_empty(&self) -> bool {
        self.corrupt.is_empty()
            && self.cut.is_empty()
            && self.drop.is_empty()
            && self.random.is_none()
    }

    pub fn validate(&self) -> io::Result<()> {
        if let Some(r) = &self.random {
            for (name, p) in [
                ("corrupt_per_mib", r.corrupt_per_mib),
                ("cut_per_mib", r.cut_per_mib),
            ] {
                if !(0.0..=1.0).contains(&p) {
                    return Err(invalid(&format!(
                        "random {name} = {p} is not a probability in 0..=1"
                    )));
                }
            }
        }
        Ok(())
    }
}
