//! What the daemon does for each API call, for the poller and at start-up: the session's
//! lock is held across the whole operation, the state is recorded in the store before and
//! after the frontend does its part, and the frontend is the judge of what it holds
//! (cutover is refused by the frontend, with its count of untouched chunks).
//!
//! Ordering rule: an intermediate state (`cutting-over`, `aborting`) is committed before the
//! frontend is asked, so a daemon killed in the middle finds it on restart and asks again
//! (both requests are idempotent on the frontend's side: a finished frontend has recorded
//! its phase in its state dir, which is read first).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use dataplane::frontend::state::{self as fstate, Phase};
use dataplane::frontend::status;
use serde_json::json;

use crate::api::ApiError;
use crate::daemon::Daemon;
use crate::session::{new_id, now_unix_ms, CreateRequest, Session};
use crate::state::{self, Action, Plan, State};
use crate::supervisor::Liveness;

/// Cutover and abort sync the target or write every dirty chunk back: minutes, not seconds.
const LONG: Duration = Duration::from_secs(3600);
const QUICK: Duration = Duration::from_secs(30);
const EXIT_WAIT: Duration = Duration::from_secs(60);

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
}

async fn load(d: &Daemon, id: &str) -> Result<Session, ApiError> {
    let key = id.to_string();
    d.db.call(move |s| s.get(&key))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no session {id:?}")))
}

async fn save(d: &Daemon, s: &mut Session) -> Result<(), ApiError> {
    s.updated_unix_ms = now_unix_ms();
    let copy = s.clone();
    d.db.call(move |st| st.put(&copy)).await?;
    Ok(())
}

fn bad_gateway(s: &Session, msg: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, msg).with("state", json!(s.state.name()))
}

pub async fn create(d: &Daemon, req: CreateRequest) -> Result<Session, ApiError> {
    req.validate()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let all = d.db.call(|s| s.list()).await?;
    if let Some(other) = all
        .iter()
        .find(|o| o.target == req.target && !o.state.is_final())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "session {} ({}) already migrates into {}; finish, abort or delete it first",
                other.id, other.state, req.target
            ),
        ));
    }
    let mut s = Session::new(new_id(), req, &d.data_dir, now_unix_ms());
    save(d, &mut s).await?;
    tracing::info!(session = %s.id, name = %s.name, target = %s.target, "session created");
    Ok(s)
}

/// The session, with the frontend's live status when one runs.
pub async fn show(d: &Daemon, id: &str) -> Result<Session, ApiError> {
    let mut s = load(d, id).await?;
    if matches!(s.state, State::Migrating | State::Paused | State::Ready) {
        let sup = d.sup.clone();
        let copy = s.clone();
        if let Ok(Some(st)) = blocking(move || sup.status(&copy)).await? {
            s.progress = Some(st);
        }
    }
    Ok(s)
}

/// The session's map: from its frontend while one answers, else from its state dir.
pub async fn map(
    d: &Daemon,
    id: &str,
    cells: u32,
) -> Result<dataplane::map::cells::MapCells, ApiError> {
    let s = load(d, id).await?;
    if s.state == State::Created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the session has no map before it starts (start it first)",
        )
        .with("state", json!(s.state.name())));
    }
    let sup = d.sup.clone();
    let copy = s.clone();
    if s.state.has_frontend() {
        if let Ok(Some(m)) = blocking(move || sup.map(&copy, cells)).await? {
            return Ok(m);
        }
    }
    let dir = s.state_dir().to_path_buf();
    blocking(move || status::offline_map(&dir, cells))
        .await?
        .map_err(|e| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("no map for this session: {e}"),
            )
            .with("state", json!(s.state.name()))
        })
}

pub async fn delete(d: &Daemon, id: &str) -> Result<(), ApiError> {
    let lock = d.lock_of(id);
    let _g = lock.lock().await;
    let s = load(d, id).await?;
    match state::plan(s.state, Action::Delete) {
        Err(e) => Err(ApiError::new(StatusCode::CONFLICT, e).with("state", json!(s.state.name()))),
        Ok(_) => {
            let key = id.to_string();
            d.db.call(move |st| st.delete(&key)).await?;
            // The target stays; the session's own files (state dir, log) go.
            let dir = crate::session::session_dir(&d.data_dir, id);
            let _ = blocking(move || std::fs::remove_dir_all(dir)).await;
            tracing::info!(session = %id, "session deleted");
            Ok(())
        }
    }
}

pub async fn act(d: &Daemon, id: &str, a: Action) -> Result<Session, ApiError> {
    let lock = d.lock_of(id);
    let _g = lock.lock().await;
    let mut s = load(d, id).await?;
    let from = s.state;
    let (via, to) = match state::plan(from, a) {
        Err(e) => {
            let mut err = ApiError::new(StatusCode::CONFLICT, &e).with("state", json!(from.name()));
            if a == Action::Cutover {
                if let Some(p) = &s.progress {
                    err = err.with("untouched", json!(p.chunks_untouched));
                }
            }
            return Err(err);
        }
        Ok(Plan::AlreadyDone) => return Ok(s),
        Ok(Plan::Remove) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "delete is not an action",
            ))
        }
        Ok(Plan::Go { via, to }) => (via, to),
    };
    if let Some(v) = via {
        s.state = v;
        save(d, &mut s).await?;
    }
    tracing::info!(session = %id, action = a.name(), from = %from, "session action");
    match a {
        Action::Start => start(d, s).await,
        Action::Pause => set_rate(d, s, Some(0), to).await,
        Action::Resume => {
            let rate = s.options.background_rate_bytes_per_s;
            set_rate(d, s, rate, to).await
        }
        Action::Cutover => cutover(d, s, from).await,
        Action::Abort if from == State::Created => {
            s.state = State::Aborted;
            save(d, &mut s).await?;
            Ok(s)
        }
        Action::Abort => abort(d, s, from).await,
        Action::Delete => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "delete is not an action",
        )),
    }
}

async fn start(d: &Daemon, mut s: Session) -> Result<Session, ApiError> {
    let sup = d.sup.clone();
    let copy = s.clone();
    match blocking(move || sup.ensure(&copy, false)).await? {
        Ok(pid) => {
            s.state = State::Migrating;
            s.frontend_pid = pid;
            s.failure_reason = None;
            save(d, &mut s).await?;
            Ok(s)
        }
        Err(e) => {
            fail(d, &mut s, &e).await?;
            Err(bad_gateway(&s, e))
        }
    }
}

async fn fail(d: &Daemon, s: &mut Session, reason: &str) -> Result<(), ApiError> {
    tracing::warn!(session = %s.id, reason, "session failed");
    s.state = State::Failed;
    s.failure_reason = Some(reason.to_string());
    s.frontend_pid = None;
    save(d, s).await
}

async fn set_rate(
    d: &Daemon,
    mut s: Session,
    rate: Option<u64>,
    to: State,
) -> Result<Session, ApiError> {
    let sup = d.sup.clone();
    let copy = s.clone();
    let r = blocking(move || sup.command(&copy, "set-rate", rate, QUICK)).await?;
    match r {
        Ok(rep) if rep.ok => {
            s.state = to;
            s.failure_reason = None;
            save(d, &mut s).await?;
            Ok(s)
        }
        Ok(rep) => Err(bad_gateway(
            &s,
            rep.error.unwrap_or_else(|| "set-rate refused".into()),
        )),
        Err(e) => Err(bad_gateway(&s, e)),
    }
}

/// The phase the frontend recorded in its state dir, if any.
async fn recorded_phase(s: &Session) -> Option<Phase> {
    let dir = s.state_dir().to_path_buf();
    blocking(move || fstate::load(&dir).ok().flatten().map(|st| st.phase))
        .await
        .ok()
        .flatten()
}

/// Records a finished cutover or abort once the frontend has exited by itself.
async fn finish(d: &Daemon, mut s: Session, to: State) -> Result<Session, ApiError> {
    let sup = d.sup.clone();
    let copy = s.clone();
    match blocking(move || sup.wait_exit(&copy, EXIT_WAIT)).await? {
        Ok(how) => tracing::info!(session = %s.id, state = %to, "frontend {how}"),
        // The frontend recorded its phase before answering: the session is done all the same.
        Err(e) => tracing::warn!(session = %s.id, "{e}"),
    }
    let dir = s.state_dir().to_path_buf();
    if let Ok(Ok(st)) = blocking(move || status::offline(&dir)).await {
        s.progress = Some(st);
    }
    s.state = to;
    s.frontend_pid = None;
    s.failure_reason = None;
    save(d, &mut s).await?;
    Ok(s)
}

/// Cutover from `back` (migrating, paused or ready); on refusal the session goes back.
pub async fn cutover(d: &Daemon, mut s: Session, back: State) -> Result<Session, ApiError> {
    if recorded_phase(&s).await == Some(Phase::Completed) {
        return finish(d, s, State::Completed).await;
    }
    let sup = d.sup.clone();
    let copy = s.clone();
    let r = blocking(move || sup.command(&copy, "cutover", None, LONG)).await?;
    match r {
        Ok(rep) if rep.ok => finish(d, s, State::Completed).await,
        Ok(rep) => {
            let msg = rep.error.unwrap_or_else(|| "cutover refused".into());
            s.state = state::after_refused_cutover(back);
            s.failure_reason = Some(msg.clone());
            save(d, &mut s).await?;
            match rep.untouched {
                Some(n) => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("cutover refused: {n} chunks are still untouched; wait until the session is ready (resume it if paused)"),
                )
                .with("state", json!(s.state.name()))
                .with("untouched", json!(n))),
                None => Err(bad_gateway(&s, msg)),
            }
        }
        Err(e) => {
            s.state = state::after_refused_cutover(back);
            save(d, &mut s).await?;
            Err(bad_gateway(&s, e))
        }
    }
}

/// Abort from `back`; a failed session first gets a frontend again (paused), since the
/// writes to send back live in its state dir and target.
pub async fn abort(d: &Daemon, mut s: Session, back: State) -> Result<Session, ApiError> {
    if recorded_phase(&s).await == Some(Phase::Aborted) {
        return finish(d, s, State::Aborted).await;
    }
    let sup = d.sup.clone();
    let copy = s.clone();
    if let Err(e) = blocking(move || sup.ensure(&copy, true)).await? {
        s.state = back;
        save(d, &mut s).await?;
        return Err(bad_gateway(&s, e));
    }
    let sup = d.sup.clone();
    let copy = s.clone();
    match blocking(move || sup.command(&copy, "abort", None, LONG)).await? {
        Ok(rep) if rep.ok => finish(d, s, State::Aborted).await,
        Ok(rep) => {
            s.state = back;
            save(d, &mut s).await?;
            Err(bad_gateway(
                &s,
                rep.error.unwrap_or_else(|| "abort refused".into()),
            ))
        }
        Err(e) => {
            s.state = back;
            save(d, &mut s).await?;
            Err(bad_gateway(&s, e))
        }
    }
}

/// At start-up: every session that had a frontend gets it back (re-adopted if it still
/// answers, else started again on the same state dir, which resumes), with its pause
/// re-applied; an interrupted cutover or abort is asked again.
pub async fn recover(d: Arc<Daemon>) {
    let sessions = match d.db.call(|s| s.list()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("recovery: {e}");
            return;
        }
    };
    for s in sessions.into_iter().filter(|s| s.state.has_frontend()) {
        let id = s.id.clone();
        if let Err(e) = recover_one(&d, &id).await {
            tracing::warn!(session = %id, error = %e.body, "recovery failed");
        }
    }
}

async fn recover_one(d: &Daemon, id: &str) -> Result<(), ApiError> {
    let lock = d.lock_of(id);
    let _g = lock.lock().await;
    let mut s = load(d, id).await?;
    tracing::info!(session = %id, state = %s.state, "recovering");
    match s.state {
        State::Migrating | State::Paused | State::Ready => {
            let paused = s.state == State::Paused;
            let sup = d.sup.clone();
            let copy = s.clone();
            match blocking(move || sup.ensure(&copy, paused)).await? {
                Ok(pid) => {
                    s.frontend_pid = pid;
                    // The pause (or its undoing) may have reached the frontend and not the
                    // store before the daemon died: apply what the store says.
                    let rate = if paused {
                        Some(0)
                    } else {
                        s.options.background_rate_bytes_per_s
                    };
                    let sup = d.sup.clone();
                    let copy = s.clone();
                    if let Ok(Err(e)) =
                        blocking(move || sup.command(&copy, "set-rate", rate, QUICK)).await
                    {
                        tracing::warn!(session = %id, "re-applying the rate: {e}");
                    }
                    save(d, &mut s).await
                }
                Err(e) => fail(d, &mut s, &e).await,
            }
        }
        State::CuttingOver => {
            if recorded_phase(&s).await != Some(Phase::Completed) {
                let sup = d.sup.clone();
                let copy = s.clone();
                if let Err(e) = blocking(move || sup.ensure(&copy, false)).await? {
                    return fail(d, &mut s, &e).await;
                }
            }
            cutover(d, s, State::Migrating).await.map(|_| ())
        }
        State::Aborting => abort(d, s, State::Migrating).await.map(|_| ()),
        _ => Ok(()),
    }
}

/// The poller: progress and readiness from each running frontend. A session whose frontend
/// died gets it started again on the same state dir, which resumes where the map says
/// (bounded: `RESTARTS_MAX` per `RESTART_WINDOW`, then the session fails with the reason), or
/// is finished if the frontend was cut over or aborted directly through its admin socket.
pub async fn poll(d: Arc<Daemon>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = poll_once(&d).await {
            tracing::warn!(error = %e.body, "poll failed");
        }
    }
}

async fn poll_once(d: &Daemon) -> Result<(), ApiError> {
    let sessions = d.db.call(|s| s.list()).await?;
    for s in sessions {
        if !matches!(s.state, State::Migrating | State::Paused | State::Ready) {
            continue;
        }
        let lock = d.lock_of(&s.id);
        // Busy with an action: that action records what happens.
        let Ok(_g) = lock.try_lock() else { continue };
        let mut s = load(d, &s.id).await?;
        if !matches!(s.state, State::Migrating | State::Paused | State::Ready) {
            continue;
        }
        let sup = d.sup.clone();
        let copy = s.clone();
        match blocking(move || sup.liveness(&copy)).await? {
            Liveness::Answering(st) => {
                if let Some(next) = state::on_progress(s.state, st.chunks_untouched) {
                    tracing::info!(session = %s.id, "ready: every chunk is on the target");
                    s.state = next;
                }
                s.progress = Some(*st);
                save(d, &mut s).await?;
            }
            Liveness::Busy => {}
            Liveness::Gone(reason) => match recorded_phase(&s).await {
                Some(Phase::Completed) => {
                    finish(d, s, State::Completed).await?;
                }
                Some(Phase::Aborted) => {
                    finish(d, s, State::Aborted).await?;
                }
                _ if d.may_restart(&s.id) => {
                    tracing::warn!(session = %s.id, %reason, "frontend died; starting it again on its state dir");
                    drop(_g);
                    recover_one(d, &s.id).await?;
                }
                _ => {
                    let why = format!(
                        "{reason} (its frontend was started again {} times in {:?} and died each time)",
                        crate::daemon::RESTARTS_MAX,
                        crate::daemon::RESTART_WINDOW
                    );
                    fail(d, &mut s, &why).await?
                }
            },
        }
    }
    Ok(())
}
