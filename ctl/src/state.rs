//! A session's state machine, pure (no IO): which operator action is legal in which state,
//! what it leads to, and what would make an illegal one legal.
//!
//! ```text
//! created ─start─► migrating ◄─resume/pause─► paused
//!                      │  (nothing Untouched)    │
//!                      └────────► ready ◄────────┘
//!                                   │ cutover
//!                             cutting-over ─► completed
//! created ─abort─► aborted;  migrating|paused|ready ─abort─► aborting ─► aborted
//! any ─► failed(reason);  failed ─start─► migrating (retry);  failed ─abort─► aborting
//! ```
//!
//! Rules that must hold:
//! * Every action is idempotent: asking for the state a session is already in (or is on
//!   its way to) is a success that changes nothing ([`Plan::AlreadyDone`]).
//! * An illegal action is refused with a message that says what would make it legal; the
//!   API answers it with 409.
//! * `completed` and `aborted` are final: the target (or the source) is the disk now.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Created,
    Migrating,
    Paused,
    Ready,
    CuttingOver,
    Completed,
    Aborting,
    Aborted,
    Failed,
}

impl State {
    pub const ALL: [State; 9] = [
        State::Created,
        State::Migrating,
        State::Paused,
        State::Ready,
        State::CuttingOver,
        State::Completed,
        State::Aborting,
        State::Aborted,
        State::Failed,
    ];

    /// The stable name stored in the database and shown by the API.
    pub fn name(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Migrating => "migrating",
            State::Paused => "paused",
            State::Ready => "ready",
            State::CuttingOver => "cutting-over",
            State::Completed => "completed",
            State::Aborting => "aborting",
            State::Aborted => "aborted",
            State::Failed => "failed",
        }
    }

    pub fn from_name(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.name() == s)
    }

    /// A frontend process should be running for the session.
    pub fn has_frontend(self) -> bool {
        matches!(
            self,
            State::Migrating | State::Paused | State::Ready | State::CuttingOver | State::Aborting
        )
    }

    /// Nothing will ever happen to the session again (only delete).
    pub fn is_final(self) -> bool {
        matches!(self, State::Completed | State::Aborted)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    Cutover,
    Abort,
    Delete,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::Start,
        Action::Pause,
        Action::Resume,
        Action::Cutover,
        Action::Abort,
        Action::Delete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cutover => "cutover",
            Action::Abort => "abort",
            Action::Delete => "delete",
        }
    }
}

/// What to do for a legal action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The session already is where the action leads: answer success, change nothing.
    AlreadyDone,
    /// Record `via` (if any) before doing the work, and `to` once it is done.
    Go { via: Option<State>, to: State },
    /// Forget the session (its frontend is gone; the target and state dir stay).
    Remove,
}

/// An illegal action: `hint` says what would make it legal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Illegal {
    pub state: State,
    pub action: Action,
    pub hint: &'static str,
}

impl std::fmt::Display for Illegal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot {} a session that is {}: {}",
            self.action.name(),
            self.state,
            self.hint
        )
    }
}

/// The plan for `action` in state `from`. Cutover from `migrating`/`paused` is planned
/// (the poller may lag behind the frontend); the frontend refuses it if chunks are still
/// untouched, and the session goes back to where it was.
pub fn plan(from: State, action: Action) -> Result<Plan, Illegal> {
    use Action as A;
    use State as S;
    let go = |via, to| Ok(Plan::Go { via, to });
    let no = |hint| {
        Err(Illegal {
            state: from,
            action,
            hint,
        })
    };
    match (action, from) {
        (A::Start, S::Created | S::Failed) => go(None, S::Migrating),
        (A::Start, S::Migrating | S::Paused | S::Ready | S::CuttingOver) => Ok(Plan::AlreadyDone),
        (A::Start, S::Completed) => {
            no("the migration is complete; create a new session to migrate again")
        }
        (A::Start, S::Aborting | S::Aborted) => {
            no("the session was aborted; create a new session to migrate again")
        }

        (A::Pause, S::Migrating) => go(None, S::Paused),
        (A::Pause, S::Paused) => Ok(Plan::AlreadyDone),
        (A::Pause, S::Created | S::Failed) => no("nothing is migrating; start the session first"),
        (A::Pause, S::Ready) => no("every chunk is on the target already; cut over or abort"),
        (A::Pause, S::CuttingOver | S::Completed) => {
            no("the session is cut over; nothing to pause")
        }
        (A::Pause, S::Aborting | S::Aborted) => no("the session is aborted; nothing to pause"),

        (A::Resume, S::Paused) => go(None, S::Migrating),
        (A::Resume, S::Migrating | S::Ready) => Ok(Plan::AlreadyDone),
        (A::Resume, S::Created | S::Failed) => no("nothing was paused; start the session first"),
        (A::Resume, S::CuttingOver | S::Completed) => {
            no("the session is cut over; nothing to resume")
        }
        (A::Resume, S::Aborting | S::Aborted) => {
            no("the session is aborted; create a new session to migrate again")
        }

        (A::Cutover, S::Ready | S::Migrating | S::Paused) => go(Some(S::CuttingOver), S::Completed),
        (A::Cutover, S::CuttingOver | S::Completed) => Ok(Plan::AlreadyDone),
        (A::Cutover, S::Created) => {
            no("start the session and wait until it is ready (nothing untouched)")
        }
        (A::Cutover, S::Failed) => no("start the session again (retry) and wait until it is ready"),
        (A::Cutover, S::Aborting | S::Aborted) => {
            no("the session is aborted; the source is the disk")
        }

        (A::Abort, S::Created) => go(None, S::Aborted),
        (A::Abort, S::Migrating | S::Paused | S::Ready | S::Failed) => {
            go(Some(S::Aborting), S::Aborted)
        }
        (A::Abort, S::Aborting | S::Aborted) => Ok(Plan::AlreadyDone),
        (A::Abort, S::CuttingOver | S::Completed) => {
            no("the session is cut over; the target is the disk now")
        }

        (A::Delete, S::Created | S::Completed | S::Aborted | S::Failed) => Ok(Plan::Remove),
        (A::Delete, S::Migrating | S::Paused | S::Ready) => {
            no("a frontend is running; cut over or abort first")
        }
        (A::Delete, S::CuttingOver | S::Aborting) => no("wait until the cutover or abort finishes"),
    }
}

/// The state the poller records after reading `untouched` chunks from the frontend, if it
/// changes: a migrating or paused session with nothing untouched is ready.
pub fn on_progress(from: State, untouched: u64) -> Option<State> {
    match from {
        State::Migrating | State::Paused if untouched == 0 => Some(State::Ready),
        _ => None,
    }
}

/// The state after a refused cutover: back where the session was.
pub fn after_refused_cutover(before: State) -> State {
    match before {
        State::Paused => State::Paused,
        State::Migrating => State::Migrating,
        _ => State::Migrating,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (state, action) pair: the expected outcome, written out so a change to the
    /// machine is a change to this table.
    #[test]
    fn every_pair() {
        use Action as A;
        use State as S;
        let done = Ok(Plan::AlreadyDone);
        let go = |via, to| Ok(Plan::Go { via, to });
        let cases: Vec<(S, A, Result<Plan, ()>)> = vec![
            (S::Created, A::Start, go(None, S::Migrating)),
            (S::Created, A::Pause, Err(())),
            (S::Created, A::Resume, Err(())),
            (S::Created, A::Cutover, Err(())),
            (S::Created, A::Abort, go(None, S::Aborted)),
            (S::Created, A::Delete, Ok(Plan::Remove)),
            (S::Migrating, A::Start, done),
            (S::Migrating, A::Pause, go(None, S::Paused)),
            (S::Migrating, A::Resume, done),
            (
                S::Migrating,
                A::Cutover,
                go(Some(S::CuttingOver), S::Completed),
            ),
            (S::Migrating, A::Abort, go(Some(S::Aborting), S::Aborted)),
            (S::Migrating, A::Delete, Err(())),
            (S::Paused, A::Start, done),
            (S::Paused, A::Pause, done),
            (S::Paused, A::Resume, go(None, S::Migrating)),
            (
                S::Paused,
                A::Cutover,
                go(Some(S::CuttingOver), S::Completed),
            ),
            (S::Paused, A::Abort, go(Some(S::Aborting), S::Aborted)),
            (S::Paused, A::Delete, Err(())),
            (S::Ready, A::Start, done),
            (S::Ready, A::Pause, Err(())),
            (S::Ready, A::Resume, done),
            (S::Ready, A::Cutover, go(Some(S::CuttingOver), S::Completed)),
            (S::Ready, A::Abort, go(Some(S::Aborting), S::Aborted)),
            (S::Ready, A::Delete, Err(())),
            (S::CuttingOver, A::Start, done),
            (S::CuttingOver, A::Pause, Err(())),
            (S::CuttingOver, A::Resume, Err(())),
            (S::CuttingOver, A::Cutover, done),
            (S::CuttingOver, A::Abort, Err(())),
            (S::CuttingOver, A::Delete, Err(())),
            (S::Completed, A::Start, Err(())),
            (S::Completed, A::Pause, Err(())),
            (S::Completed, A::Resume, Err(())),
            (S::Completed, A::Cutover, done),
            (S::Completed, A::Abort, Err(())),
            (S::Completed, A::Delete, Ok(Plan::Remove)),
            (S::Aborting, A::Start, Err(())),
            (S::Aborting, A::Pause, Err(())),
            (S::Aborting, A::Resume, Err(())),
            (S::Aborting, A::Cutover, Err(())),
            (S::Aborting, A::Abort, done),
            (S::Aborting, A::Delete, Err(())),
            (S::Aborted, A::Start, Err(())),
            (S::Aborted, A::Pause, Err(())),
            (S::Aborted, A::Resume, Err(())),
            (S::Aborted, A::Cutover, Err(())),
            (S::Aborted, A::Abort, done),
            (S::Aborted, A::Delete, Ok(Plan::Remove)),
            (S::Failed, A::Start, go(None, S::Migrating)),
            (S::Failed, A::Pause, Err(())),
            (S::Failed, A::Resume, Err(())),
            (S::Failed, A::Cutover, Err(())),
            (S::Failed, A::Abort, go(Some(S::Aborting), S::Aborted)),
            (S::Failed, A::Delete, Ok(Plan::Remove)),
        ];
        assert_eq!(cases.len(), State::ALL.len() * Action::ALL.len());
        for (s, a, want) in cases {
            let got = plan(s, a);
            match (&got, &want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{s} {a:?}"),
                (Err(e), Err(())) => {
                    assert_eq!((e.state, e.action), (s, a));
                    assert!(!e.hint.is_empty());
                    assert!(e.to_string().contains(s.name()), "{e}");
                }
                _ => panic!("{s} {a:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// Idempotence: applying a legal action's target state and asking again is a no-op.
    #[test]
    fn repeating_an_action_is_a_no_op() {
        for s in State::ALL {
            for a in Action::ALL {
                if a == Action::Delete {
                    continue;
                }
                if let Ok(Plan::Go { to, .. }) = plan(s, a) {
                    assert_eq!(plan(to, a), Ok(Plan::AlreadyDone), "{s} {a:?} -> {to}");
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(State::from_name(s.name()), Some(s));
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::Value::String(s.name().into()))
            );
        }
        assert_eq!(State::from_name("bogus"), None);
    }

    #[test]
    fn progress_makes_ready_only_when_nothing_is_untouched() {
        for s in State::ALL {
            let want = matches!(s, State::Migrating | State::Paused).then_some(State::Ready);
            assert_eq!(on_progress(s, 0), want, "{s}");
            assert_eq!(on_progress(s, 1), None, "{s}");
        }
    }

    #[test]
    fn refused_cutover_goes_back() {
        assert_eq!(after_refused_cutover(State::Paused), State::Paused);
        assert_eq!(after_refused_cutover(State::Migrating), State::Migrating);
        assert_eq!(after_refused_cutover(State::Ready), State::Migrating);
    }
}
