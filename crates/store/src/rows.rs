//! Decoding rows into the model, shared by both backends (their schemas
//! give every column the same name and kind: JSON and enums as text, times
//! and counts as integers). A backend's row type is a [`Row`] through the
//! blanket impl; the decoders below read it by column name.

use std::fmt::Display;
use std::str::FromStr;

use orch_core::{Artifact, DeadLetter, Event, EventKind, Gate, Run, RunId, Task};
use serde::de::DeserializeOwned;

use crate::{ApiToken, Error, LlmCallRecord, Result, TaskRef};

/// A row of either backend, read by column name as the kinds the schemas use.
pub(crate) trait Row {
    fn text(&self, name: &str) -> sqlx::Result<Option<String>>;
    fn int(&self, name: &str) -> sqlx::Result<Option<i64>>;
    fn int32(&self, name: &str) -> sqlx::Result<Option<i32>>;
    fn real(&self, name: &str) -> sqlx::Result<Option<f64>>;
    fn flag(&self, name: &str) -> sqlx::Result<Option<bool>>;
}

impl<R> Row for R
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn text(&self, name: &str) -> sqlx::Result<Option<String>> {
        self.try_get(name)
    }
    fn int(&self, name: &str) -> sqlx::Result<Option<i64>> {
        self.try_get(name)
    }
    fn int32(&self, name: &str) -> sqlx::Result<Option<i32>> {
        self.try_get(name)
    }
    fn real(&self, name: &str) -> sqlx::Result<Option<f64>> {
        self.try_get(name)
    }
    fn flag(&self, name: &str) -> sqlx::Result<Option<bool>> {
        self.try_get(name)
    }
}

/// A row as a JSON object of its columns by name (PostgreSQL's `to_json`
/// of a row, as `json_agg` gives rows of a subquery in one column).
#[derive(Debug)]
pub(crate) struct JsonRow(pub(crate) serde_json::Map<String, serde_json::Value>);

impl JsonRow {
    /// The rows of a JSON array of objects (`json_agg`); none for NULL.
    pub(crate) fn parse_all(text: Option<&str>) -> Result<Vec<JsonRow>> {
        let Some(text) = text else {
            return Ok(Vec::new());
        };
        serde_json::from_str::<Vec<serde_json::Map<String, serde_json::Value>>>(text)
            .map(|rows| rows.into_iter().map(JsonRow).collect())
            .map_err(|e| Error::Decode(format!("rows as JSON: {e}")))
    }

    /// Column `name`: `None` if NULL; an error if there is no such column
    /// or it is not of the kind `kind` (`pick` says which).
    fn get<T>(
        &self,
        name: &str,
        kind: &str,
        pick: impl FnOnce(&serde_json::Value) -> Option<T>,
    ) -> sqlx::Result<Option<T>> {
        match self.0.get(name) {
            None => Err(sqlx::Error::ColumnNotFound(name.to_string())),
            Some(serde_json::Value::Null) => Ok(None),
            Some(v) => pick(v)
                .map(Some)
                .ok_or_else(|| sqlx::Error::Decode(format!("expected {kind}, found {v}").into())),
        }
    }
}

impl Row for JsonRow {
    fn text(&self, name: &str) -> sqlx::Result<Option<String>> {
        self.get(name, "text", |v| v.as_str().map(str::to_string))
    }
    fn int(&self, name: &str) -> sqlx::Result<Option<i64>> {
        self.get(name, "an integer", serde_json::Value::as_i64)
    }
    fn int32(&self, name: &str) -> sqlx::Result<Option<i32>> {
        self.get(name, "a 32-bit integer", |v| {
            v.as_i64().and_then(|n| i32::try_from(n).ok())
        })
    }
    fn real(&self, name: &str) -> sqlx::Result<Option<f64>> {
        self.get(name, "a number", serde_json::Value::as_f64)
    }
    fn flag(&self, name: &str) -> sqlx::Result<Option<bool>> {
        self.get(name, "a boolean", serde_json::Value::as_bool)
    }
}

/// The columns of `row` whose names start with a prefix, read without it:
/// one table's columns in a row that joins two with clashing names.
pub(crate) struct Prefixed<'a, R> {
    pub(crate) row: &'a R,
    pub(crate) prefix: &'static str,
}

impl<R: Row> Prefixed<'_, R> {
    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl<R: Row> Row for Prefixed<'_, R> {
    fn text(&self, name: &str) -> sqlx::Result<Option<String>> {
        self.row.text(&self.name(name))
    }
    fn int(&self, name: &str) -> sqlx::Result<Option<i64>> {
        self.row.int(&self.name(name))
    }
    fn int32(&self, name: &str) -> sqlx::Result<Option<i32>> {
        self.row.int32(&self.name(name))
    }
    fn real(&self, name: &str) -> sqlx::Result<Option<f64>> {
        self.row.real(&self.name(name))
    }
    fn flag(&self, name: &str) -> sqlx::Result<Option<bool>> {
        self.row.flag(&self.name(name))
    }
}

/// A column value [`col`] reads: one of the kinds of [`Row`], or its `Option`.
pub(crate) trait Value: Sized {
    /// The column, `None` if NULL.
    fn read(row: &impl Row, name: &str) -> sqlx::Result<Option<Self>>;
}

macro_rules! values {
    ($($t:ty => $read:ident),+ $(,)?) => {$(
        impl Value for $t {
            fn read(row: &impl Row, name: &str) -> sqlx::Result<Option<Self>> {
                row.$read(name)
            }
        }
    )+};
}

values!(String => text, i64 => int, i32 => int32, f64 => real, bool => flag);

/// What [`col`] returns for a column of kind `V`: `V` (NULL is an error) or `Option<V>`.
pub(crate) trait FromColumn: Sized {
    fn from_column(row: &impl Row, name: &str) -> Result<Self>;
}

impl<V: Value> FromColumn for V {
    fn from_column(row: &impl Row, name: &str) -> Result<Self> {
        V::read(row, name)
            .map_err(|e| Error::Decode(format!("column {name}: {e}")))?
            .ok_or_else(|| Error::Decode(format!("column {name}: unexpected NULL")))
    }
}

impl<V: Value> FromColumn for Option<V> {
    fn from_column(row: &impl Row, name: &str) -> Result<Self> {
        V::read(row, name).map_err(|e| Error::Decode(format!("column {name}: {e}")))
    }
}

/// Column `name` of `row`.
pub(crate) fn col<T: FromColumn>(row: &impl Row, name: &str) -> Result<T> {
    T::from_column(row, name)
}

/// A JSON text column, decoded.
pub(crate) fn json_col<T: DeserializeOwned>(row: &impl Row, name: &str) -> Result<T> {
    let text: String = col(row, name)?;
    serde_json::from_str(&text).map_err(|e| Error::Decode(format!("column {name}: {e}")))
}

pub(crate) fn opt_json_col<T: DeserializeOwned>(row: &impl Row, name: &str) -> Result<Option<T>> {
    let text: Option<String> = col(row, name)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| Error::Decode(format!("column {name}: {e}"))))
        .transpose()
}

/// A text column holding an enum (or any `FromStr`), parsed.
pub(crate) fn parse_col<T>(row: &impl Row, name: &str) -> Result<T>
where
    T: FromStr,
    T::Err: Display,
{
    let text: String = col(row, name)?;
    text.parse()
        .map_err(|e| Error::Decode(format!("column {name}: {e}")))
}

pub(crate) fn opt_parse_col<T>(row: &impl Row, name: &str) -> Result<Option<T>>
where
    T: FromStr,
    T::Err: Display,
{
    let text: Option<String> = col(row, name)?;
    text.map(|t| {
        t.parse()
            .map_err(|e| Error::Decode(format!("column {name}: {e}")))
    })
    .transpose()
}

pub(crate) fn u32_col(row: &impl Row, name: &str) -> Result<u32> {
    let v: i64 = col(row, name)?;
    u32::try_from(v).map_err(|_| Error::Decode(format!("column {name}: {v} is out of range")))
}

pub(crate) fn u64_col(row: &impl Row, name: &str) -> Result<u64> {
    let v: i64 = col(row, name)?;
    u64::try_from(v).map_err(|_| Error::Decode(format!("column {name}: {v} is out of range")))
}

pub(crate) fn run_from_row(row: &impl Row) -> Result<Run> {
    Ok(Run {
        id: RunId(col(row, "id")?),
        goal: col(row, "goal")?,
        context: json_col(row, "context")?,
        workflow: col(row, "workflow")?,
        status: parse_col(row, "status")?,
        status_reason: col(row, "status_reason")?,
        success_criteria: json_col(row, "success_criteria")?,
        settings: json_col(row, "settings")?,
        provider: col(row, "provider")?,
        iterations: u32_col(row, "iterations")?,
        cost_usd: col(row, "cost_usd")?,
        tokens_in: col(row, "tokens_in")?,
        tokens_out: col(row, "tokens_out")?,
        version: col(row, "version")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
        finished_at: col(row, "finished_at")?,
    })
}

pub(crate) fn task_from_row(row: &impl Row) -> Result<Task> {
    Ok(Task {
        run_id: RunId(col(row, "run_id")?),
        id: col(row, "id")?,
        role: parse_col(row, "role")?,
        title: col(row, "title")?,
        instructions: col(row, "instructions")?,
        needs: json_col(row, "needs")?,
        expected: json_col(row, "expected")?,
        validation: json_col(row, "validation")?,
        gate: opt_parse_col(row, "gate")?,
        round: u32_col(row, "round")?,
        findings: json_col(row, "findings")?,
        status: parse_col(row, "status")?,
        attempt: u32_col(row, "attempt")?,
        max_attempts: u32_col(row, "max_attempts")?,
        timeout_ms: col(row, "timeout_ms")?,
        dedupe_key: col(row, "dedupe_key")?,
        not_before: col(row, "not_before")?,
        lease_owner: col(row, "lease_owner")?,
        lease_expires_at: col(row, "lease_expires_at")?,
        last_error: col(row, "last_error")?,
        retryable: col(row, "retryable")?,
        result_summary: col(row, "result_summary")?,
        verdict: opt_json_col(row, "verdict")?,
        queued_at: col(row, "queued_at")?,
        started_at: col(row, "started_at")?,
        finished_at: col(row, "finished_at")?,
        cost_usd: col(row, "cost_usd")?,
    })
}

pub(crate) fn task_ref_from_row(row: &impl Row) -> Result<TaskRef> {
    Ok(TaskRef {
        run_id: RunId(col(row, "run_id")?),
        task_id: col(row, "id")?,
        role: parse_col(row, "role")?,
        attempt: u32_col(row, "attempt")?,
        lease_owner: col(row, "lease_owner")?,
    })
}

pub(crate) fn gate_from_row(row: &impl Row) -> Result<Gate> {
    Ok(Gate {
        run_id: RunId(col(row, "run_id")?),
        kind: parse_col(row, "kind")?,
        status: parse_col(row, "status")?,
        required: col(row, "required")?,
        review_task: col(row, "review_task")?,
        rework_rounds: u32_col(row, "rework_rounds")?,
        reason: col(row, "reason")?,
        findings: json_col(row, "findings")?,
        updated_at: col(row, "updated_at")?,
    })
}

pub(crate) fn event_from_row(row: &impl Row) -> Result<Event> {
    Ok(Event {
        run_id: RunId(col(row, "run_id")?),
        seq: col(row, "seq")?,
        kind: parse_col::<EventKind>(row, "kind")?,
        task_id: col(row, "task_id")?,
        message: col(row, "message")?,
        data: json_col(row, "data")?,
        created_at: col(row, "created_at")?,
    })
}

pub(crate) fn artifact_from_row(row: &impl Row) -> Result<Artifact> {
    Ok(Artifact {
        run_id: RunId(col(row, "run_id")?),
        name: col(row, "name")?,
        version: col(row, "version")?,
        kind: col(row, "kind")?,
        path: col(row, "path")?,
        task_id: col(row, "task_id")?,
        attempt: u32_col(row, "attempt")?,
        content: col(row, "content")?,
        metadata: json_col(row, "metadata")?,
        created_at: col(row, "created_at")?,
    })
}

pub(crate) fn llm_call_from_row(row: &impl Row) -> Result<LlmCallRecord> {
    Ok(LlmCallRecord {
        run_id: RunId(col(row, "run_id")?),
        task_id: col(row, "task_id")?,
        attempt: u32_col(row, "attempt")?,
        step: u32_col(row, "step")?,
        request_hash: col(row, "request_hash")?,
        provider: col(row, "provider")?,
        model: col(row, "model")?,
        request: col(row, "request")?,
        response: col(row, "response")?,
        input_tokens: u64_col(row, "input_tokens")?,
        output_tokens: u64_col(row, "output_tokens")?,
        cache_read_tokens: u64_col(row, "cache_read_tokens")?,
        cache_write_tokens: u64_col(row, "cache_write_tokens")?,
        latency_ms: col(row, "latency_ms")?,
        cost_usd: col(row, "cost_usd")?,
        created_at: col(row, "created_at")?,
    })
}

pub(crate) fn token_from_row(row: &impl Row) -> Result<ApiToken> {
    Ok(ApiToken {
        id: col(row, "id")?,
        name: col(row, "name")?,
        scopes: json_col(row, "scopes")?,
        secret_hash: col(row, "secret_hash")?,
        created_at: col(row, "created_at")?,
        revoked_at: col(row, "revoked_at")?,
    })
}

pub(crate) fn dead_letter_from_row(row: &impl Row) -> Result<DeadLetter> {
    Ok(DeadLetter {
        id: col(row, "id")?,
        run_id: RunId(col(row, "run_id")?),
        task_id: col(row, "task_id")?,
        role: parse_col(row, "role")?,
        attempts: u32_col(row, "attempts")?,
        error: col(row, "error")?,
        created_at: col(row, "created_at")?,
        replayed_at: col(row, "replayed_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON rows read each kind by column name; NULL is `None`; a missing
    /// column or a value of another kind is an error naming it.
    #[test]
    fn json_rows_read_columns_by_name_and_kind() {
        let rows = JsonRow::parse_all(Some(
            r#"[{"name": "spec", "version": 3, "cost_usd": 0.30000000000000004,
                 "retryable": true, "path": null, "round": 70000}]"#,
        ))
        .expect("a JSON array of objects");
        let row = &rows[0];
        assert_eq!(col::<String>(row, "name").unwrap(), "spec");
        assert_eq!(col::<i64>(row, "version").unwrap(), 3);
        assert_eq!(col::<f64>(row, "cost_usd").unwrap(), 0.1 + 0.2);
        assert!(col::<bool>(row, "retryable").unwrap());
        assert_eq!(col::<Option<String>>(row, "path").unwrap(), None);
        assert_eq!(col::<i32>(row, "round").unwrap(), 70000);

        let err = col::<String>(row, "path").unwrap_err().to_string();
        assert!(err.contains("path") && err.contains("NULL"), "{err}");
        let err = col::<String>(row, "absent").unwrap_err().to_string();
        assert!(err.contains("absent"), "{err}");
        let err = col::<String>(row, "version").unwrap_err().to_string();
        assert!(
            err.contains("version") && err.contains("expected text"),
            "{err}"
        );
        assert!(JsonRow::parse_all(Some("[1, 2]")).is_err(), "not objects");
        assert!(
            JsonRow::parse_all(None).unwrap().is_empty(),
            "NULL: no rows"
        );
    }
}
