//! `ferry migrate status ID --map`: the volume map as a picture (the seed's FIG. 4). The
//! volume is cut into cells of consecutive chunks (`map::cells`); the terminal strip shows
//! one coloured block per cell (the state most of its chunks are in), the SVG one bar per
//! cell split into one rectangle per state present, each as wide as its share of the cell —
//! so the widths of each colour add up to the state's share of the volume.

use std::fmt::Write;

use dataplane::map::cells::MapCells;

/// Names, SVG colours and ANSI 256-colour codes, in the order of the cell counts.
pub const STATES: [(&str, &str, u8); 4] = [
    ("untouched", "#c8c8c8", 250),
    ("present", "#2e9d4e", 34),
    ("dirty", "#e8771e", 208),
    ("zero", "#3b6fd1", 33),
];

fn majority(c: &[u64; 4]) -> usize {
    (0..4)
        .max_by_key(|&k| (c[k], std::cmp::Reverse(k)))
        .unwrap_or(0)
}

/// The strip: `width` cells per row, ANSI colours (or letters U/P/D/Z with `color` off),
/// then a legend with the chunk count of each state.
pub fn heat_strip(m: &MapCells, width: usize, color: bool) -> String {
    let mut out = String::new();
    for row in m.cells.chunks(width.max(1)) {
        for c in row {
            let k = majority(c);
            if color {
                let _ = write!(out, "\x1b[38;5;{}m█", STATES[k].2);
            } else {
                out.push(['U', 'P', 'D', 'Z'][k]);
            }
        }
        if color {
            out.push_str("\x1b[0m");
        }
        out.push('\n');
    }
    let totals = m.totals();
    let per_cell = m.chunks_total as f64 / m.cells.len().max(1) as f64;
    let _ = write!(out, "{per_cell:.1} chunks per cell:");
    for (k, (name, _, ansi)) in STATES.iter().enumerate() {
        if color {
            let _ = write!(out, "  \x1b[38;5;{ansi}m█\x1b[0m {name} {}", totals[k]);
        } else {
            let _ = write!(out, "  {} {name} {}", ['U', 'P', 'D', 'Z'][k], totals[k]);
        }
    }
    out.push('\n');
    out
}

/// Cells per SVG row.
const ROW_CELLS: usize = 64;
const CELL_W: f64 = 12.0;
const CELL_H: f64 = 18.0;

/// A standalone SVG: a title, one row of bars per 64 cells (`class="cell"` rectangles with
/// `data-state`), and a legend (`class="legend"`).
pub fn svg(m: &MapCells, title: &str) -> String {
    let rows = m.cells.len().div_ceil(ROW_CELLS).max(1);
    let width = ROW_CELLS as f64 * CELL_W + 20.0;
    let map_top = 34.0;
    let legend_y = map_top + rows as f64 * (CELL_H + 4.0) + 10.0;
    let height = legend_y + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-family="sans-serif" font-size="14">{}</text>"#,
        escape(title)
    );
    for (i, c) in m.cells.iter().enumerate() {
        let x0 = 10.0 + (i % ROW_CELLS) as f64 * CELL_W;
        let y = map_top + (i / ROW_CELLS) as f64 * (CELL_H + 4.0);
        let n: u64 = c.iter().sum();
        if n == 0 {
            continue;
        }
        let mut x = x0;
        for (k, (name, fill, _)) in STATES.iter().enumerate() {
            if c[k] == 0 {
                continue;
            }
            let w = CELL_W * c[k] as f64 / n as f64;
            let _ = writeln!(
                s,
                r#"<rect class="cell" data-state="{name}" x="{x:.4}" y="{y}" width="{w:.4}" height="{CELL_H}" fill="{fill}"/>"#
            );
            x += w;
        }
    }
    let totals = m.totals();
    let mut x = 10.0;
    for (k, (name, fill, _)) in STATES.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<rect class="legend" data-state="{name}" x="{x}" y="{legend_y}" width="12" height="12" fill="{fill}"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-family="sans-serif" font-size="12">{name} {}</text>"#,
            x + 16.0,
            legend_y + 11.0,
            totals[k]
        );
        x += 180.0;
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> MapCells {
        MapCells {
            chunks_total: 8,
            chunk_size_bytes: 4096,
            cells: vec![[2, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 2], [1, 1, 0, 0]],
        }
    }

    #[test]
    fn strip_without_colour() {
        let t = heat_strip(&map(), 2, false);
        assert_eq!(t.lines().next(), Some("UP"));
        assert_eq!(t.lines().nth(1), Some("ZU"));
        assert!(t.contains("U untouched 3") && t.contains("Z zero 2"), "{t}");
    }

    #[test]
    fn svg_widths_follow_counts() {
        let t = svg(&map(), "a <b>");
        assert!(t.contains("a &lt;b&gt;"));
        let mut widths = [0.0f64; 4];
        for l in t.lines().filter(|l| l.contains(r#"class="cell""#)) {
            let k = STATES
                .iter()
                .position(|s| l.contains(&format!("\"{}\"", s.0)))
                .expect("state");
            let w: f64 = l
                .split("width=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .and_then(|v| v.parse().ok())
                .expect("width");
            widths[k] += w;
        }
        assert_eq!(widths, [18.0, 12.0, 6.0, 12.0]);
    }
}
