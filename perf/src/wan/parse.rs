//! Text forms of rates, sizes and fault positions, as `ferry-wan` takes them.

use std::str::FromStr;

use super::config::Direction;
use super::faults::FaultAt;

/// A rate in bytes per second; `None` is unlimited (`0`, `unlimited`, `none`).
///
/// Bits per second with a `bit` suffix, decimal prefixes as in tc: `100mbit`, `1gbit`,
/// `64kbit`. Bytes per second with `B` (decimal: `12.5MB`, `1GB`), `iB` (binary: `4MiB`)
/// or `bps` (tc's bytes, decimal: `10mbps`), or a bare number. A trailing `/s` is allowed.
/// Case does not matter.
pub fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("/s").unwrap_or(&t);
    if matches!(t, "0" | "unlimited" | "none") {
        return Ok(None);
    }
    let err = || format!("{s:?}: expected a rate like 100mbit, 1gbit, 12.5MB, 4MiB or unlimited");
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| err())?;
    let bytes_per_s = match unit.trim() {
        "" | "b" | "bps" => num,
        "bit" => num / 8.0,
        "kbit" => num * 1e3 / 8.0,
        "mbit" => num * 1e6 / 8.0,
        "gbit" => num * 1e9 / 8.0,
        "tbit" => num * 1e12 / 8.0,
        "kb" | "kbps" => num * 1e3,
        "mb" | "mbps" => num * 1e6,
        "gb" | "gbps" => num * 1e9,
        "tb" | "tbps" => num * 1e12,
        "kib" => num * 1024.0,
        "mib" => num * 1024.0 * 1024.0,
        "gib" => num * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err()),
    };
    let rounded = bytes_per_s.round();
    if !(rounded >= 1.0 && rounded < u64::MAX as f64) {
        return Err(format!(
            "{s:?}: a rate must be at least 1 byte/s (0 means unlimited)"
        ));
    }
    Ok(Some(rounded as u64))
}

/// A byte count: a bare number or one with a binary suffix `K`, `M`, `G`, `T` (optionally
/// followed by `iB` or `B`): `4096`, `64K`, `1MiB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a byte count like 4096, 64K or 1M"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

impl FromStr for Direction {
    type Err = String;

    /// `up` / `upstream` (client→server) or `down` / `downstream`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "up" | "upstream" => Ok(Direction::Upstream),
            "down" | "downstream" => Ok(Direction::Downstream),
            _ => Err(format!("{s:?}: expected a direction, up or down")),
        }
    }
}

impl FromStr for FaultAt {
    type Err = String;

    /// `DIR:CONN:OFFSET`, e.g. `up:0:1M`: direction, connection index (accept order from
    /// 0), byte offset in that direction of that connection.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [dir, conn, offset] = parts[..] else {
            return Err(format!("{s:?}: expected DIR:CONN:OFFSET, e.g. up:0:1M"));
        };
        fault_at(s, dir, conn, offset)
    }
}

fn fault_at(whole: &str, dir: &str, conn: &str, offset: &str) -> Result<FaultAt, String> {
    Ok(FaultAt {
        direction: dir.parse()?,
        connection: conn
            .trim()
            .parse()
            .map_err(|_| format!("{whole:?}: {conn:?} is not a connection index"))?,
        offset: parse_bytes(offset)?,
    })
}

/// `DIR:CONN:OFFSET:LEN`, e.g. `down:2:64K:100`: a drop fault of `LEN` bytes.
pub fn parse_drop(s: &str) -> Result<(FaultAt, usize), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [dir, conn, offset, len] = parts[..] else {
        return Err(format!(
            "{s:?}: expected DIR:CONN:OFFSET:LEN, e.g. up:0:1M:100"
        ));
    };
    let at = fault_at(s, dir, conn, offset)?;
    let len = usize::try_from(parse_bytes(len)?).map_err(|_| format!("{s:?}: too long"))?;
    Ok((at, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100mbit"), Ok(Some(12_500_000)));
        assert_eq!(parse_rate("1gbit"), Ok(Some(125_000_000)));
        assert_eq!(parse_rate("1Gbit/s"), Ok(Some(125_000_000)));
        assert_eq!(parse_rate("12.5MB"), Ok(Some(12_500_000)));
        assert_eq!(parse_rate("4MiB"), Ok(Some(4 << 20)));
        assert_eq!(parse_rate("10mbps"), Ok(Some(10_000_000)));
        assert_eq!(parse_rate("8000000"), Ok(Some(8_000_000)));
        assert_eq!(parse_rate("0"), Ok(None));
        assert_eq!(parse_rate("unlimited"), Ok(None));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("1bit").is_err(), "rounds to 0 bytes/s");
        assert!(parse_rate("12furlongs").is_err());
    }

    #[test]
    fn positions() {
        let at: FaultAt = "up:3:64K".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            at,
            FaultAt {
                direction: Direction::Upstream,
                connection: 3,
                offset: 65_536
            }
        );
        assert_eq!(
            parse_drop("down:0:10:5"),
            Ok((
                FaultAt {
                    direction: Direction::Downstream,
                    connection: 0,
                    offset: 10
                },
                5
            ))
        );
        assert!("sideways:0:1".parse::<FaultAt>().is_err());
        assert!("up:0".parse::<FaultAt>().is_err());
        assert!("up:x:1".parse::<FaultAt>().is_err());
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
    }
}
