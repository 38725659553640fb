//! The session store: one SQLite file (`DATA_DIR/control.sqlite`), WAL journal with
//! `synchronous=FULL`, so a session written before an answer survives `kill -9` of the
//! daemon and power loss.
//!
//! Rules:
//! * Every write is one transaction, committed before the API answers.
//! * SQLite calls block: async code goes through [`Db::call`], which runs them on tokio's
//!   blocking pool, never on a runtime worker.
//! * Writers of one session hold that session's lock in the daemon (`api::Daemon::lock`),
//!   so a read-modify-write of a row never races another.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::session::{Compress, Options, Session, Source};
use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("session store: a row holds an unknown {what} {value:?}")]
    Corrupt { what: &'static str, value: String },
    #[error("session store: {0}")]
    Join(String),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    backend TEXT NOT NULL,
    volume TEXT NOT NULL,
    target TEXT NOT NULL,
    chunk_size_bytes INTEGER NOT NULL,
    background_rate_bytes_per_s INTEGER,
    compress TEXT NOT NULL,
    dedup INTEGER NOT NULL,
    cores INTEGER,
    state TEXT NOT NULL,
    failure_reason TEXT,
    created_unix_ms INTEGER NOT NULL,
    updated_unix_ms INTEGER NOT NULL,
    state_dir TEXT NOT NULL,
    nbd_socket TEXT NOT NULL,
    nbd_uri TEXT NOT NULL,
    frontend_pid INTEGER,
    progress TEXT
);";

const COLUMNS: &str = "id, name, backend, volume, target, chunk_size_bytes,
    background_rate_bytes_per_s, compress, dedup, cores, state, failure_reason,
    created_unix_ms, updated_unix_ms, state_dir, nbd_socket, nbd_uri, frontend_pid, progress";

pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    /// Inserts or replaces the whole row, in one transaction.
    pub fn put(&mut self, s: &Session) -> Result<(), StoreError> {
        let progress = s
            .progress
            .as_ref()
            .and_then(|p| serde_json::to_string(p).ok());
        let tx = self.conn.transaction()?;
        tx.execute(
            &format!(
                "INSERT OR REPLACE INTO sessions ({COLUMNS}) VALUES
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
            ),
            params![
                s.id,
                s.name,
                s.source.backend,
                s.source.volume,
                s.target,
                s.chunk_size_bytes,
                s.options.background_rate_bytes_per_s.map(|r| r as i64),
                s.options.compress.name(),
                s.options.dedup,
                s.options.cores,
                s.state.name(),
                s.failure_reason,
                s.created_unix_ms as i64,
                s.updated_unix_ms as i64,
                s.state_dir,
                s.nbd_socket,
                s.nbd_uri,
                s.frontend_pid,
                progress,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM sessions WHERE id = ?1"),
                [id],
                raw,
            )
            .optional()?;
        row.map(decode).transpose()
    }

    /// Every session, oldest first.
    pub fn list(&self) -> Result<Vec<Session>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM sessions ORDER BY created_unix_ms, id"
        ))?;
        let rows = stmt.query_map([], raw)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(decode(r?)?);
        }
        Ok(out)
    }

    pub fn delete(&mut self, id: &str) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute("DELETE FROM sessions WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(n > 0)
    }
}

/// A row's columns before their text is checked.
struct Raw {
    session: Session,
    compress: String,
    state: String,
    progress: Option<String>,
}

fn raw(r: &Row<'_>) -> rusqlite::Result<Raw> {
    let rate: Option<i64> = r.get(6)?;
    let created: i64 = r.get(12)?;
    let updated: i64 = r.get(13)?;
    Ok(Raw {
        session: Session {
            id: r.get(0)?,
            name: r.get(1)?,
            source: Source {
                backend: r.get(2)?,
                volume: r.get(3)?,
            },
            target: r.get(4)?,
            chunk_size_bytes: r.get(5)?,
            options: Options {
                background_rate_bytes_per_s: rate.map(|r| r.max(0) as u64),
                compress: Compress::Auto,
                dedup: r.get(8)?,
                cores: r.get(9)?,
            },
            state: State::Created,
            failure_reason: r.get(11)?,
            created_unix_ms: created.max(0) as u64,
            updated_unix_ms: updated.max(0) as u64,
            state_dir: r.get(14)?,
            nbd_socket: r.get(15)?,
            nbd_uri: r.get(16)?,
            frontend_pid: r.get(17)?,
            progress: None,
        },
        compress: r.get(7)?,
        state: r.get(10)?,
        progress: r.get(18)?,
    })
}

fn decode(r: Raw) -> Result<Session, StoreError> {
    let mut s = r.session;
    s.state = State::from_name(&r.state).ok_or(StoreError::Corrupt {
        what: "state",
        value: r.state,
    })?;
    s.options.compress = match r.compress.as_str() {
        "auto" => Compress::Auto,
        "off" => Compress::Off,
        _ => {
            return Err(StoreError::Corrupt {
                what: "compress",
                value: r.compress,
            })
        }
    };
    // Progress is a cache of the frontend's last status: an unreadable one is dropped.
    s.progress = r.progress.and_then(|p| serde_json::from_str(&p).ok());
    Ok(s)
}

/// The store shared by the daemon's tasks.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Mutex<Store>>,
}

impl Db {
    pub fn new(store: Store) -> Db {
        Db {
            inner: Arc::new(Mutex::new(store)),
        }
    }

    /// Runs `f` on the blocking pool with the store.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = inner
                .lock()
                .map_err(|_| StoreError::Join("a store call panicked earlier".into()))?;
            f(&mut g)
        })
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::CreateRequest;

    #[test]
    fn put_get_list_delete_survive_reopen() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.sqlite");
        let req: CreateRequest = serde_json::from_str(
            r#"{"backend":"127.0.0.1:1","volume":"v","target":"/t","background_rate_bytes_per_s":5,"compress":"off","cores":2}"#,
        )?;
        let mut s = Session::new("a1".into(), req, dir.path(), 7);
        s.state = State::Paused;
        s.failure_reason = Some("why".into());
        s.frontend_pid = Some(42);
        s.progress = Some(dataplane::frontend::status::Status {
            chunks_total: 9,
            ..Default::default()
        });
        {
            let mut st = Store::open(&path)?;
            st.put(&s)?;
        }
        let mut st = Store::open(&path)?;
        let got = st.get("a1")?.ok_or("missing")?;
        assert_eq!(serde_json::to_value(&got)?, serde_json::to_value(&s)?);
        assert_eq!(st.list()?.len(), 1);
        assert!(st.get("nope")?.is_none());
        assert!(st.delete("a1")?);
        assert!(!st.delete("a1")?);
        assert!(st.list()?.is_empty());
        Ok(())
    }
}
