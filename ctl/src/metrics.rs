//! The daemon's own Prometheus metrics (`GET /metrics` on its API): sessions per state, and
//! the last progress the poller recorded for each session (the frontends serve their own,
//! finer metrics with `ferry frontend --metrics`).

use dataplane::metrics::text::{Exposition, Kind};

use crate::session::Session;
use crate::state::State;

pub fn render(sessions: &[Session]) -> String {
    let mut e = Exposition::default();
    let name = "ferry_control_sessions";
    e.family(name, Kind::Gauge, "Sessions per state.");
    for st in State::ALL {
        let n = sessions.iter().filter(|s| s.state == st).count();
        e.sample(name, &[("state", st.name())], n as f64);
    }
    let with_progress: Vec<(&Session, &dataplane::frontend::status::Status)> = sessions
        .iter()
        .filter_map(|s| s.progress.as_ref().map(|p| (s, p)))
        .collect();
    let name = "ferry_control_session_chunks";
    e.family(
        name,
        Kind::Gauge,
        "Chunks per state of each session, as last polled from its frontend.",
    );
    for (s, p) in &with_progress {
        for (state, n) in [
            ("untouched", p.chunks_untouched),
            ("present", p.chunks_present),
            ("dirty", p.chunks_dirty),
            ("zero", p.chunks_zero),
        ] {
            e.sample(
                name,
                &[("session", &s.id), ("name", &s.name), ("state", state)],
                n as f64,
            );
        }
    }
    let name = "ferry_control_session_fetched_bytes";
    e.family(
        name,
        Kind::Gauge,
        "Bytes fetched by each session's frontend since it started, per class.",
    );
    for (s, p) in &with_progress {
        for (class, n) in [
            ("on-demand", p.fetched_bytes_on_demand),
            ("background", p.fetched_bytes_background),
        ] {
            e.sample(
                name,
                &[("session", &s.id), ("name", &s.name), ("class", class)],
                n as f64,
            );
        }
    }
    e.finish()
}
