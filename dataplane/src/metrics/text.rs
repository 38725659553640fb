//! The Prometheus text exposition format (version 0.0.4): `# HELP`, `# TYPE`, then samples
//! `name{label="value"} number`, one family at a time.

use std::fmt::Write;

#[derive(Default)]
pub struct Exposition {
    out: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Summary,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }
}

/// Label values escaped as the format wants (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    /// Starts a family: its help line and type.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\n', " "));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.name());
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
            writeln!(self.out, " {}", value as i64)
        } else {
            writeln!(self.out, " {value}")
        };
        self
    }

    /// A family with one unlabelled sample.
    pub fn one(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_labels() {
        let mut e = Exposition::default();
        e.one("ferry_up", Kind::Gauge, "Up.", 1.0);
        e.family("ferry_x_total", Kind::Counter, "X.")
            .sample("ferry_x_total", &[("class", "on-demand")], 3.0)
            .sample("ferry_x_total", &[("class", "a\"b")], 0.5);
        let t = e.finish();
        assert_eq!(
            t,
            "# HELP ferry_up Up.\n# TYPE ferry_up gauge\nferry_up 1\n\
             # HELP ferry_x_total X.\n# TYPE ferry_x_total counter\n\
             ferry_x_total{class=\"on-demand\"} 3\nferry_x_total{class=\"a\\\"b\"} 0.5\n"
        );
    }
}
