//! The layout of `perf/RESULTS.md`, shared by both modes so neither wipes the other:
//!
//! ```text
//! head (descriptions; kept as it is)
//! RESULTS_MARKER
//! results of the default run (hydration, serving, memory)   <- `ferry-perf --results`
//! WAN_BEGIN
//! results of the WAN run                                     <- `ferry-perf wan --results`
//! WAN_END
//! ISSUE5_BEGIN
//! results of the QoS latency and prefetch runs               <- `ferry-perf qos|prefetch --results`
//! ISSUE5_END
//! ```
//!
//! The default run rewrites what lies between the marker and the first block and carries
//! every block over unchanged; a mode with a block replaces only its block (appending it
//! when there is none yet). The issue-5 block holds one section per mode (`qos`,
//! `prefetch`), each between its own markers, so each of those modes keeps the other's
//! figures. A file without the marker gets [`RESULTS_HEADER`] as its head.

use std::path::Path;

use anyhow::{Context, Result};

use crate::report::{RESULTS_HEADER, RESULTS_MARKER};

pub const WAN_BEGIN: &str =
    "<!-- ferry-perf wan: begin; this block is rewritten by `ferry-perf wan --results` -->";
pub const WAN_END: &str = "<!-- ferry-perf wan: end -->";

pub const ISSUE5_BEGIN: &str =
    "<!-- ferry-perf issue 5: begin; this block is rewritten by `ferry-perf qos|prefetch --results` -->";
pub const ISSUE5_END: &str = "<!-- ferry-perf issue 5: end -->";

/// The blocks of the file other than the default run's results, in file order.
const BLOCKS: [(&str, &str); 2] = [(WAN_BEGIN, WAN_END), (ISSUE5_BEGIN, ISSUE5_END)];

/// Where a whole block `begin`..`end` (markers included) is in `text`, if it has one.
fn block(text: &str, begin: &str, end: &str) -> Option<(usize, usize)> {
    let b = text.find(begin)?;
    let e = b + text[b..].find(end)? + end.len();
    Some((b, e))
}

/// The WAN block (markers included) and where it is, if the text has a whole one.
fn wan_block(text: &str) -> Option<(usize, usize)> {
    block(text, WAN_BEGIN, WAN_END)
}

/// The new text with `body` as the default run's results.
pub fn with_main_results(old: &str, body: &str) -> String {
    let (head, rest) = match old.find(RESULTS_MARKER) {
        Some(i) => (&old[..i], &old[i..]),
        None => (RESULTS_HEADER, ""),
    };
    let mut text = format!("{head}{RESULTS_MARKER}\n\n{body}");
    for (begin, end) in BLOCKS {
        if let Some((b, e)) = block(rest, begin, end) {
            text.push('\n');
            text.push_str(&rest[b..e]);
            text.push('\n');
        }
    }
    text
}

/// The new text with `body` as the WAN results.
pub fn with_wan_results(old: &str, body: &str) -> String {
    if let Some((b, e)) = wan_block(old) {
        let block = format!("{WAN_BEGIN}\n\n{body}\n{WAN_END}");
        return format!("{}{block}{}", &old[..b], &old[e..]);
    }
    // A new WAN block goes before the issue-5 block, so the order stays as documented.
    if let Some((b, _)) = block(old, ISSUE5_BEGIN, ISSUE5_END) {
        let block = format!("{WAN_BEGIN}\n\n{body}\n{WAN_END}\n\n");
        return format!("{}{block}{}", &old[..b], &old[b..]);
    }
    with_block(old, WAN_BEGIN, WAN_END, body)
}

/// The markers of one mode's section inside the issue-5 block.
fn section_markers(mode: &str) -> (String, String) {
    (
        format!("<!-- issue 5 {mode}: begin -->"),
        format!("<!-- issue 5 {mode}: end -->"),
    )
}

/// The new text with `body` as the results of `mode` (`qos` or `prefetch`) in the issue-5
/// block; the other mode's section is kept. Sections keep the order of [`ISSUE5_MODES`].
pub fn with_issue5_results(old: &str, mode: &str, body: &str) -> String {
    let inner = match block(old, ISSUE5_BEGIN, ISSUE5_END) {
        Some((b, e)) => &old[b + ISSUE5_BEGIN.len()..e - ISSUE5_END.len()],
        None => "",
    };
    let mut sections = String::new();
    for m in ISSUE5_MODES {
        let (sb, se) = section_markers(m);
        let text = if m == mode {
            Some(format!("{sb}\n\n{body}\n{se}"))
        } else {
            block(inner, &sb, &se).map(|(b, e)| inner[b..e].to_string())
        };
        if let Some(t) = text {
            sections.push_str(&t);
            sections.push_str("\n\n");
        }
    }
    let body = sections.trim_end().to_string() + "\n";
    if let Some((b, e)) = block(old, ISSUE5_BEGIN, ISSUE5_END) {
        let block = format!("{ISSUE5_BEGIN}\n\n{body}\n{ISSUE5_END}");
        return format!("{}{block}{}", &old[..b], &old[e..]);
    }
    with_block(old, ISSUE5_BEGIN, ISSUE5_END, &body)
}

/// The modes whose results live in the issue-5 block, in the order they are written.
pub const ISSUE5_MODES: [&str; 2] = ["qos", "prefetch"];

/// Appends a new block (the text has none yet) at the end, after the marker.
fn with_block(old: &str, begin: &str, end: &str, body: &str) -> String {
    let block = format!("{begin}\n\n{body}\n{end}");
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

    #[test]
    fn issue5_sections_keep_each_other_and_the_other_blocks() {
        let head = "# Results\n\n";
        let start = format!("{head}{RESULTS_MARKER}\n\nmain\n");
        let t = with_wan_results(&start, "wan 1\n");
        let t = with_issue5_results(&t, "prefetch", "pf 1\n");
        assert!(t.contains("pf 1") && t.contains("wan 1") && t.contains("main"));
        let t = with_issue5_results(&t, "qos", "qos 1\n");
        assert!(t.contains("pf 1") && t.contains("qos 1"));
        // qos comes before prefetch whatever the order they were written in.
        assert!(t.find("qos 1") < t.find("pf 1"));
        let t = with_issue5_results(&t, "prefetch", "pf 2\n");
        assert!(t.contains("pf 2") && !t.contains("pf 1") && t.contains("qos 1"));
        assert_eq!(t.matches(ISSUE5_BEGIN).count(), 1);
        assert_eq!(with_issue5_results(&t, "prefetch", "pf 2\n"), t);
        // The other modes keep the issue-5 block, and it stays after the WAN block.
        let t = with_main_results(&t, "main 2\n");
        let t = with_wan_results(&t, "wan 2\n");
        assert!(
            t.contains("main 2")
                && t.contains("wan 2")
                && t.contains("qos 1")
                && t.contains("pf 2")
        );
        assert!(t.find(WAN_BEGIN) < t.find(ISSUE5_BEGIN));
        // A WAN block written after the issue-5 one still goes before it.
        let t = with_issue5_results(&start, "qos", "q\n");
        let t = with_wan_results(&t, "w\n");
        assert!(t.find(WAN_BEGIN) < t.find(ISSUE5_BEGIN) && t.starts_with(head));
        let t = with_issue5_results("", "qos", "q\n");
        assert!(t.starts_with(RESULTS_HEADER) && t.contains(ISSUE5_END));
    }
}
