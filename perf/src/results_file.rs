//! The layout of `perf/RESULTS.md`, shared by both modes so neither wipes the other:
//!
//! ```text
//! head (descriptions; kept as it is)
//! RESULTS_MARKER
//! results of the default run (hydration, serving, memory)   <- `ferry-perf --results`
//! WAN_BEGIN
//! results of the WAN run                                     <- `ferry-perf wan --results`
//! WAN_END
//! ```
//!
//! The default run rewrites what lies between the marker and the WAN block and carries
//! the WAN block over unchanged; the WAN run replaces only its block (appending it when
//! there is none yet). A file without the marker gets [`RESULTS_HEADER`] as its head.

use std::path::Path;

use anyhow::{Context, Result};

use crate::report::{RESULTS_HEADER, RESULTS_MARKER};

pub const WAN_BEGIN: &str =
    "<!-- ferry-perf wan: begin; this block is rewritten by `ferry-perf wan --results` -->";
pub const WAN_END: &str = "<!-- ferry-perf wan: end -->";

/// The WAN block (markers included) and where it is, if the text has a whole one.
fn wan_block(text: &str) -> Option<(usize, usize)> {
    let begin = text.find(WAN_BEGIN)?;
    let end = begin + text[begin..].find(WAN_END)? + WAN_END.len();
    Some((begin, end))
}

/// The new text with `body` as the default run's results.
pub fn with_main_results(old: &str, body: &str) -> String {
    let (head, rest) = match old.find(RESULTS_MARKER) {
        Some(i) => (&old[..i], &old[i..]),
        None => (RESULTS_HEADER, ""),
    };
    let mut text = format!("{head}{RESULTS_MARKER}\n\n{body}");
    if let Some((b, e)) = wan_block(rest) {
        text.push('\n');
        text.push_str(&rest[b..e]);
        text.push('\n');
    }
    text
}

/// The new text with `body` as the WAN results.
pub fn with_wan_results(old: &str, body: &str) -> String {
    let block = format!("{WAN_BEGIN}\n\n{body}\n{WAN_END}");
    if let Some((b, e)) = wan_block(old) {
        return format!("{}{block}{}", &old[..b], &old[e..]);
    }
    let mut text = if old.contains(RESULTS_MARKER) {
        old.to_string()
    } else {
        format!("{RESULTS_HEADER}{RESULTS_MARKER}\n\n")
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push('\n');
    text.push_str(&block);
    text.push('\n');
    text
}

pub fn rewrite(path: &Path, edit: impl FnOnce(&str) -> String) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    std::fs::write(path, edit(&old)).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_keeps_the_other() {
        let head = "# Results\n\ndescriptions\n\n";
        let start = format!("{head}{RESULTS_MARKER}\n\nold main\n");
        let t = with_wan_results(&start, "wan 1\n");
        assert!(t.starts_with(&format!("{head}{RESULTS_MARKER}\n\nold main\n")));
        assert!(t.contains("wan 1"));
        let t = with_main_results(&t, "new main\n");
        assert!(t.starts_with(head));
        assert!(t.contains("new main") && !t.contains("old main"));
        assert!(t.contains(&format!("{WAN_BEGIN}\n\nwan 1\n\n{WAN_END}")));
        let t2 = with_wan_results(&t, "wan 2\n");
        assert!(t2.contains("new main") && t2.contains("wan 2") && !t2.contains("wan 1"));
        assert_eq!(t2.matches(WAN_BEGIN).count(), 1);
        // Idempotent: writing the same results again changes nothing.
        assert_eq!(with_wan_results(&t2, "wan 2\n"), t2);
        assert_eq!(
            with_main_results(&t2, "new main\n"),
            with_main_results(&with_main_results(&t2, "new main\n"), "new main\n")
        );
    }

    #[test]
    fn a_new_file_gets_the_header() {
        let t = with_wan_results("", "wan\n");
        assert!(t.starts_with(RESULTS_HEADER));
        assert!(t.contains(RESULTS_MARKER) && t.contains("wan"));
        let t = with_main_results("", "main\n");
        assert!(t.starts_with(RESULTS_HEADER) && !t.contains(WAN_BEGIN));
    }
}
