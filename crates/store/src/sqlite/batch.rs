//! Group commit on the write connection: the queue of writes waiting for it,
//! and how a batch of them runs in one transaction (see the parent module's
//! "Group commit").
//!
//! Inside a batch, writes of the same statement run chained: `k` copies of
//! the statement in one call to the connection's thread, with their
//! parameters renumbered one after the other. A call is a round trip to that
//! thread and back, which costs about as much as the statement itself; a
//! chain pays it once for up to [`MAX_CHAIN`] writes. The order of writes
//! made at once is the store's to choose, so a batch is sorted by statement
//! first.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use futures_util::StreamExt;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Either, Executor};

use super::{Query, Refusal};
use crate::Result;

/// The most writes of one statement chained into one call (chains are 1,
/// 2, 4 or 8 long).
const MAX_CHAIN: usize = 8;

/// What a statement on the write connection returned.
pub(super) type Answer = std::result::Result<Vec<SqliteRow>, sqlx::Error>;

/// A parameter of a [`Write`].
#[derive(Debug, Clone)]
enum Param {
    Text(Arc<str>),
    Blob(Arc<[u8]>),
    Int(i64),
    Real(f64),
}

impl Param {
    /// `query` with this bound after the parameters it has.
    fn bind_to(&self, query: Query) -> Query {
        match self {
            Param::Text(v) => query.bind(v.clone()),
            Param::Blob(v) => query.bind(v.clone()),
            Param::Int(v) => query.bind(*v),
            Param::Real(v) => query.bind(*v),
        }
    }
}

/// A statement for the write connection (one of the `sql` constants, whose
/// parameters are numbered `?1`, `?2`, ...) and its parameters, in order.
/// Kept apart rather than built into a query so that it can run more than
/// once (a failed batch runs its writes again one at a time) and be chained
/// with others.
#[derive(Debug, Clone)]
pub(super) struct Write {
    sql: &'static str,
    params: Vec<Param>,
}

impl Write {
    pub(super) fn new(sql: &'static str) -> Write {
        Write {
            sql,
            params: Vec::new(),
        }
    }

    pub(super) fn text(mut self, value: impl Into<Arc<str>>) -> Write {
        self.params.push(Param::Text(value.into()));
        self
    }

    pub(super) fn blob(mut self, value: impl Into<Arc<[u8]>>) -> Write {
        self.params.push(Param::Blob(value.into()));
        self
    }

    pub(super) fn int(mut self, value: i64) -> Write {
        self.params.push(Param::Int(value));
        self
    }

    pub(super) fn real(mut self, value: f64) -> Write {
        self.params.push(Param::Real(value));
        self
    }

    /// The write as a query of its own: its text with anonymous parameters,
    /// as a chain of one ([`Chained`]), since a statement of several that
    /// refers only to higher numbers (`?4` after a statement with `?1` to
    /// `?3`) would have its lower ones counted as anonymous by sqlx and its
    /// own left unbound (NULL).
    pub(super) fn query(&self) -> Query {
        let plain = Ends {
            begin: false,
            commit: false,
        };
        let chained = Chained::of(self.sql, 1, plain);
        if self.params.len() != chained.params {
            // Not as the text says: sqlx reports the mismatch.
            return self
                .params
                .iter()
                .fold(sqlx::query(self.sql), |query, p| p.bind_to(query));
        }
        chained
            .refs
            .iter()
            .fold(sqlx::query(chained.text), |query, &n| {
                self.params[n - 1].bind_to(query)
            })
    }
}

/// A queued write and where its answer goes.
pub(super) struct Job {
    pub(super) write: Write,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<Answer>>,
}

/// The writes waiting for the write connection.
#[derive(Default)]
pub(super) struct WriteQueue {
    jobs: Mutex<VecDeque<Job>>,
    /// Told of every write queued.
    pub(super) ready: tokio::sync::Notify,
    /// Transactions of more than one write committed, for tests.
    pub(super) batches: AtomicUsize,
    /// Calls that ran a chain of more than one write, for tests.
    pub(super) chains: AtomicUsize,
}

impl std::fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteQueue")
            .field("queued", &self.jobs().len())
            .finish_non_exhaustive()
    }
}

impl WriteQueue {
    fn jobs(&self) -> MutexGuard<'_, VecDeque<Job>> {
        // A panic while the lock is held cannot leave the queue half-changed.
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.jobs().is_empty()
    }

    pub(super) fn push(&self, job: Job) {
        self.jobs().push_back(job);
        self.ready.notify_one();
    }

    /// Up to `max` of the queued writes, oldest first.
    pub(super) fn take(&self, max: usize) -> Vec<Job> {
        let mut jobs = self.jobs();
        let n = jobs.len().min(max);
        jobs.drain(..n).collect()
    }

    /// Run `batch` on `c` in one transaction and answer each write once it
    /// has committed; a lone write runs on its own. A refusal
    /// (`orch-assert`) undoes only its own statement; any other failure (of
    /// a statement, of `BEGIN` or of `COMMIT`) rolls the transaction back
    /// and runs the writes again one at a time, each answered with its own
    /// result.
    pub(super) async fn run(&self, c: &mut SqliteConnection, batch: Vec<Job>) {
        use std::sync::atomic::Ordering::Relaxed;
        if batch.len() > 1 {
            if let Some(answers) = self.in_one_transaction(c, &batch).await {
                self.batches.fetch_add(1, Relaxed);
                for (job, answer) in batch.into_iter().zip(answers) {
                    let _ = job.reply.send(Ok(answer));
                }
                return;
            }
            tracing::debug!(
                writes = batch.len(),
                "a batch of writes failed as a whole; running them one at a time"
            );
        }
        for job in batch {
            let answer = job.write.query().fetch_all(&mut *c).await;
            let _ = job.reply.send(Ok(answer));
        }
    }

    /// The answers of `batch` (in its order) run in one committed
    /// transaction, writes of the same statement chained; `None` (nothing
    /// written) if a statement failed other than by a refusal, or the
    /// transaction could not begin or commit. `BEGIN` rides with the first
    /// chain and `COMMIT` with the last: a batch makes no more calls than
    /// its chains.
    async fn in_one_transaction(
        &self,
        c: &mut SqliteConnection,
        batch: &[Job],
    ) -> Option<Vec<Answer>> {
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| batch[i].write.sql);
        let mut answers: Vec<Option<Answer>> = batch.iter().map(|_| None).collect();
        let (mut rest, mut begun, mut committed) = (&order[..], false, false);
        while let Some(&first) = rest.first() {
            let sql = batch[first].write.sql;
            let same = rest
                .iter()
                .take_while(|&&i| batch[i].write.sql == sql)
                .count();
            // A power of two: fewer texts to prepare and keep.
            let len = 1 << same.min(MAX_CHAIN).ilog2();
            let chain = &rest[..len];
            let writes: Vec<&Write> = chain.iter().map(|&i| &batch[i].write).collect();
            let ends = Ends {
                begin: !begun,
                commit: chain.len() == rest.len(),
            };
            let ran = self.run_chain(c, &writes, ends).await;
            begun = true;
            let Some(ran) = ran.filter(|ran| !ran.answers.is_empty()) else {
                rollback(c).await;
                return None;
            };
            committed = ran.committed;
            rest = &rest[ran.answers.len()..];
            for (&i, answer) in chain.iter().zip(ran.answers) {
                answers[i] = Some(answer);
            }
        }
        // Every write answered before anything commits: a batch reported
        // as failed is run again, so it must not have committed.
        let Some(answers) = answers.into_iter().collect::<Option<Vec<Answer>>>() else {
            rollback(c).await;
            return None;
        };
        if !committed && sqlx::raw_sql("COMMIT").execute(&mut *c).await.is_err() {
            rollback(c).await;
            return None;
        }
        Some(answers)
    }

    /// Run `writes` (all of one statement) as one chain, after `BEGIN
    /// IMMEDIATE` and before `COMMIT` as `ends` says: the answers of those
    /// that ran, in order, at least one. A refusal ends the chain: its
    /// write's answer is the last one, and the writes after it (and the
    /// `COMMIT`) have not run. `None` if a statement failed other than by a
    /// refusal, or the chain did not run every statement it holds.
    async fn run_chain(
        &self,
        c: &mut SqliteConnection,
        writes: &[&Write],
        ends: Ends,
    ) -> Option<Ran> {
        let chained = Chained::of(writes[0].sql, writes.len(), ends);
        if !writes.iter().all(|w| w.params.len() == chained.params) {
            return None;
        }
        let mut query = sqlx::query(chained.text);
        for w in writes {
            for &n in chained.refs {
                query = w.params[n - 1].bind_to(query);
            }
        }
        if writes.len() > 1 {
            self.chains
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut results = c.fetch_many(query);
        let mut ran = Ran {
            answers: Vec::with_capacity(writes.len()),
            committed: false,
        };
        // Statements ended: `BEGIN`, the writes' own, then `COMMIT`.
        let (mut ended, mut rows): (usize, Vec<SqliteRow>) = (0, Vec::new());
        let first = usize::from(ends.begin);
        while let Some(result) = results.next().await {
            match result {
                Ok(Either::Right(row)) => rows.push(row),
                Ok(Either::Left(_)) => {
                    ended += 1;
                    let own = ended.checked_sub(first).filter(|&n| n > 0);
                    if let Some(own) = own
                        && own % chained.statements == 0
                        && ran.answers.len() < writes.len()
                    {
                        ran.answers.push(Ok(std::mem::take(&mut rows)));
                    }
                }
                Err(e) => {
                    let answer = Err(e);
                    if ran.answers.len() == writes.len() || !refused_or_done(&answer) {
                        return None;
                    }
                    ran.answers.push(answer);
                    return Some(ran);
                }
            }
        }
        let expected = first + writes.len() * chained.statements + usize::from(ends.commit);
        ran.committed = ends.commit;
        (ended == expected).then_some(ran)
    }
}

/// Whether a chain opens the batch's transaction, and whether it closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Ends {
    begin: bool,
    commit: bool,
}

/// What a chain ran.
struct Ran {
    answers: Vec<Answer>,
    /// The `COMMIT` at its end ran.
    committed: bool,
}

/// True unless `answer` is a failure other than a refusal.
fn refused_or_done(answer: &Answer) -> bool {
    match answer {
        Ok(_) => true,
        Err(e) => Refusal::of(e).is_some(),
    }
}

/// Roll back the open transaction, if one is still open (a failed statement
/// may have ended it already).
async fn rollback(c: &mut SqliteConnection) {
    if let Err(e) = sqlx::raw_sql("ROLLBACK").execute(&mut *c).await {
        tracing::debug!(error = %e, "rollback of a batch of writes");
    }
}

/// `k` copies of a statement in one text.
///
/// In the copies every parameter is anonymous (`?`): sqlx binds anonymous
/// parameters in order across the statements of a text, where a numbered one
/// (`?n`) would leave the lower numbers of its statement unnamed, and sqlx
/// counts those as anonymous ones, shifting the rest. So a copy takes, in
/// order, the values of the parameters its text refers to (`refs`, the
/// same value as often as it is referred to).
#[derive(Debug, Clone, Copy)]
struct Chained {
    text: &'static str,
    /// Statements in one copy (a write may be several: a call, then reads).
    statements: usize,
    /// The highest parameter number of the statement.
    params: usize,
    /// The parameter numbers one copy refers to, in order.
    refs: &'static [usize],
}

impl Chained {
    /// `sql` `k` times with anonymous parameters, after `BEGIN IMMEDIATE`
    /// and before `COMMIT` as `ends` says. Made once for each statement, `k`
    /// and `ends`, and kept: sqlx keeps a prepared statement for each text,
    /// so the same text must come back.
    fn of(sql: &'static str, k: usize, ends: Ends) -> Chained {
        type Made = HashMap<(&'static str, usize, Ends), Chained>;
        static MADE: OnceLock<Mutex<Made>> = OnceLock::new();
        let made = MADE.get_or_init(Mutex::default);
        let mut made = made.lock().unwrap_or_else(PoisonError::into_inner);
        *made.entry((sql, k, ends)).or_insert_with(|| {
            let (copy, refs) = anonymous(sql);
            let mut text = if ends.begin {
                "BEGIN IMMEDIATE;\n".to_string()
            } else {
                String::new()
            };
            text.push_str(&vec![copy; k].join("\n"));
            if ends.commit {
                text.push_str("\nCOMMIT;");
            }
            Chained {
                text: Box::leak(text.into_boxed_str()),
                statements: statements(sql).max(1),
                params: refs.iter().copied().max().unwrap_or(0),
                refs: Box::leak(refs.into_boxed_slice()),
            }
        })
    }
}

/// The statements in `sql`, counted by their `;` outside comments and
/// string literals.
fn statements(sql: &str) -> usize {
    let mut n = 0;
    scan(sql, |piece| {
        if let Piece::Code(code) = piece {
            n += code.matches(';').count();
        }
    });
    n
}

/// `sql` with each parameter `?n` outside comments and literals made
/// anonymous (`?`), and the numbers `n` in the order they were written.
fn anonymous(sql: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(sql.len());
    let mut refs = Vec::new();
    scan(sql, |piece| match piece {
        Piece::Code(code) => {
            let mut rest = code;
            while let Some(at) = rest.find('?') {
                out.push_str(&rest[..=at]);
                let digits = &rest[at + 1..];
                let len = digits.bytes().take_while(u8::is_ascii_digit).count();
                match digits[..len].parse::<usize>() {
                    Ok(n) => refs.push(n),
                    Err(_) => out.push_str(&digits[..len]),
                }
                rest = &digits[len..];
            }
            out.push_str(rest);
        }
        Piece::Other(other) => out.push_str(other),
    });
    (out, refs)
}

/// A part of a statement text.
enum Piece<'a> {
    /// SQL proper.
    Code(&'a str),
    /// A comment or a string literal, as written.
    Other(&'a str),
}

/// Call `each` with the pieces of `sql` in order: code, and comments (`--`
/// to the end of the line, `/* */`) and literals (`'...'`, `"..."`, with
/// doubled quotes inside) kept whole.
fn scan<'a>(sql: &'a str, mut each: impl FnMut(Piece<'a>)) {
    let bytes = sql.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        let end = match bytes[i] {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                sql[i..].find('\n').map_or(sql.len(), |n| i + n)
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                sql[i + 2..].find("*/").map_or(sql.len(), |n| i + 2 + n + 2)
            }
            quote @ (b'\'' | b'"') => {
                let mut j = i + 1;
                loop {
                    match bytes.get(j) {
                        None => break sql.len(),
                        Some(&b) if b == quote && bytes.get(j + 1) == Some(&quote) => j += 2,
                        Some(&b) if b == quote => break j + 1,
                        Some(_) => j += 1,
                    }
                }
            }
            _ => {
                i += 1;
                continue;
            }
        };
        if start < i {
            each(Piece::Code(&sql[start..i]));
        }
        each(Piece::Other(&sql[i..end]));
        (start, i) = (end, end);
    }
    if start < sql.len() {
        each(Piece::Code(&sql[start..]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_and_parameters_are_read_outside_comments_and_literals() {
        let sql = "-- ?9; a comment\nINSERT INTO t (a) VALUES (jsonb(?1)); /* ?7; */\n\
                   SELECT ';?8', \"x?5\" FROM t WHERE b = ?2 AND c = ?12;\n";
        assert_eq!(statements(sql), 2);
        assert_eq!(anonymous(sql).1, vec![1, 2, 12]);
    }

    #[test]
    fn parameters_become_anonymous_in_the_order_written() {
        let sql = "-- ?1 stays\nSELECT ?1, '?1', ?12 FROM t WHERE a = ?2;";
        assert_eq!(
            anonymous(sql),
            (
                "-- ?1 stays\nSELECT ?, '?1', ? FROM t WHERE a = ?;".to_string(),
                vec![1, 12, 2]
            )
        );
    }

    #[test]
    fn every_chained_statement_has_numbered_parameters() {
        // An anonymous `?` would be numbered by position across the chain.
        for sql in [
            super::super::sql::CLAIM_TASK,
            super::super::sql::CLAIM_ATTEMPT,
            super::super::sql::COMPLETE_TASK,
            super::super::sql::COMPLETE_STEP,
            super::super::sql::COMPLETE_STEP_READING,
            super::super::sql::CREATE_RUN,
            super::super::sql::SAVE_RUN,
            super::super::sql::APPEND_EVENTS,
            super::super::sql::LOAD_RUN_PROGRESS,
            super::super::sql::RECORD_LLM_CALL,
            super::super::sql::MARK_REPLAYED,
            super::super::sql::REVOKE_TOKEN,
        ] {
            scan(sql, |piece| {
                if let Piece::Code(code) = piece {
                    for (at, _) in code.match_indices('?') {
                        let next = code.as_bytes().get(at + 1);
                        assert!(next.is_some_and(u8::is_ascii_digit), "{sql}");
                    }
                }
            });
        }
    }

    #[test]
    fn the_statements_of_each_write_are_counted() {
        // A chain's answers are told apart by these counts (a wrong one
        // makes every batch of that write fall back to one at a time).
        use super::super::sql;
        for (text, statements) in [
            (sql::CLAIM_TASK, 2),
            (sql::CLAIM_ATTEMPT, 5),
            (sql::COMPLETE_TASK, 1),
            (sql::COMPLETE_STEP, 2),
            (sql::COMPLETE_STEP_READING, 4),
            (sql::CREATE_RUN, 1),
            (sql::SAVE_RUN, 1),
            (sql::APPEND_EVENTS, 2),
            (sql::LOAD_RUN_PROGRESS, 3),
            (sql::RECORD_LLM_CALL, 1),
        ] {
            assert_eq!(super::statements(text), statements, "{text}");
        }
    }

    /// A write of several statements whose later ones refer only to a
    /// higher parameter gets it bound in each (with numbered parameters,
    /// sqlx binds the unnamed lower slots of each statement to the next
    /// values in order, runs out in the third statement and leaves its `?3`
    /// unbound: NULL).
    #[tokio::test]
    async fn a_write_binds_the_parameters_of_each_of_its_statements() {
        use sqlx::{Connection, Row};
        const SQL: &str = "SELECT ?1 AS v;\nSELECT ?3 AS v;\nSELECT ?3 AS v;";
        let mut c = SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory database");
        let write = Write::new(SQL).text("one").text("two").text("three");
        let rows = write.query().fetch_all(&mut c).await.expect("the write");
        let values: Vec<Option<String>> = rows.iter().map(|r| r.get("v")).collect();
        assert_eq!(
            values,
            [
                Some("one".into()),
                Some("three".into()),
                Some("three".into())
            ]
        );
    }

    #[test]
    fn chains_are_made_once() {
        let ends = Ends {
            begin: true,
            commit: true,
        };
        let a = Chained::of(super::super::sql::COMPLETE_STEP, 3, ends);
        let b = Chained::of(super::super::sql::COMPLETE_STEP, 3, ends);
        assert!(std::ptr::eq(a.text, b.text));
        assert_eq!((a.statements, a.params, a.refs), (2, 3, &[1, 2, 3][..]));
        assert_eq!(a.text.matches("VALUES (?, ?, ?)").count(), 3);
        assert!(a.text.starts_with("BEGIN IMMEDIATE;\n") && a.text.ends_with("\nCOMMIT;"));
        let middle = Chained::of(
            super::super::sql::COMPLETE_STEP,
            3,
            Ends {
                begin: false,
                commit: false,
            },
        );
        assert!(!middle.text.contains("BEGIN") && !middle.text.contains("COMMIT"));
    }
}
