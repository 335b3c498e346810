//! Prometheus metrics: HTTP requests by route and status with latency
//! histograms (recorded in process by [`track`]), and the system's state —
//! runs, tasks, durations, queue depths, LLM usage, gates, dead letters —
//! read from the store and broker at scrape time, so a `serve` process
//! reports the work of workers in other processes too.
//!
//! The page is Prometheus text format 0.0.4 ([`CONTENT_TYPE`]): first the
//! in-process HTTP families, then the state families written by
//! [`render_state`] (a pure function of [`Stats`] and queue depths).
//!
//! ## The in-process registry
//!
//! Each [`Metrics`] owns a `metrics-exporter-prometheus` recorder built with
//! `PrometheusBuilder::build_recorder` and **never installed globally**:
//! several routers (and many tests) live in one process, and each must count
//! only its own requests. We register through the `metrics::Recorder` trait
//! and render with the recorder's handle, so the exporter does the counter
//! and bucket bookkeeping and the exposition formatting of these families.
//!
//! Recording runs on every request, so it is kept cheap: the `Counter` and
//! `Histogram` handles of each `(method, route, status)` are cached in a map
//! looked up by a hash of the borrowed strings under a read lock — after a
//! series' first request there is no allocation and no registry lookup, only
//! atomics. Methods outside the standard set are recorded as `OTHER` so a
//! client cannot blow up the series count. Histogram samples are buffered by
//! the exporter until they are drained; a scrape drains them, and so does an
//! upkeep every [`UPKEEP_EVERY`] requests, so memory stays bounded when
//! nobody scrapes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use orch_core::{GateKind, GateStatus, Role, RunStatus};
use orch_engine::Engine;
use orch_engine::store::{Stats, TASK_DURATION_BUCKETS_MS};

use crate::{ApiError, AppState};

/// The `Content-Type` of the `/metrics` page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const HTTP_REQUESTS: &str = "orchestrator_http_requests_total";
const HTTP_DURATION: &str = "orchestrator_http_request_duration_seconds";

/// Upper bounds (seconds) of the HTTP latency histogram: 0.5 ms to 10 s.
pub const HTTP_DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Drain buffered histogram samples every this many requests.
pub const UPKEEP_EVERY: u64 = 4096;

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Cached handles of one `(method, route, status)`.
#[derive(Debug)]
struct HttpSeries {
    method: &'static str,
    route: Box<str>,
    status: u16,
    requests: Counter,
    duration: Histogram,
}

/// The process's metric registry.
#[derive(Debug)]
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Handles by hash of `(method, route, status)`; collisions share a bucket.
    series: RwLock<HashMap<u64, Vec<HttpSeries>>>,
    hasher: std::hash::RandomState,
    recorded: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), &HTTP_DURATION_BUCKETS)
            .expect("the HTTP duration buckets are not empty")
            .build_recorder();
        recorder.describe_counter(
            HTTP_REQUESTS.into(),
            Some(Unit::Count),
            "HTTP requests served, by method, route template and status code.".into(),
        );
        recorder.describe_histogram(
            HTTP_DURATION.into(),
            Some(Unit::Seconds),
            "Time to serve an HTTP request, by method and route template.".into(),
        );
        let handle = recorder.handle();
        Metrics {
            recorder,
            handle,
            series: RwLock::new(HashMap::new()),
            hasher: std::hash::RandomState::new(),
            recorded: AtomicU64::new(0),
        }
    }

    /// Record one HTTP request (`route` is the matched route template, e.g.
    /// `/runs/{id}`, or `unmatched`).
    pub fn record_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let method = normalize_method(method);
        let hash = self.hasher.hash_one((method, route, status));
        let seconds = elapsed.as_secs_f64();
        let found = {
            let map = self.series.read().unwrap_or_else(|p| p.into_inner());
            match find(&map, hash, method, route, status) {
                Some(s) => {
                    s.requests.increment(1);
                    s.duration.record(seconds);
                    true
                }
                None => false,
            }
        };
        if !found {
            let mut map = self.series.write().unwrap_or_else(|p| p.into_inner());
            if find(&map, hash, method, route, status).is_none() {
                let series = self.register(method, route, status);
                map.entry(hash).or_default().push(series);
            }
            let s = find(&map, hash, method, route, status).expect("inserted above");
            s.requests.increment(1);
            s.duration.record(seconds);
        }
        if self.recorded.fetch_add(1, Ordering::Relaxed) % UPKEEP_EVERY == UPKEEP_EVERY - 1 {
            self.handle.run_upkeep();
        }
    }

    fn register(&self, method: &'static str, route: &str, status: u16) -> HttpSeries {
        let method_label = Label::from_static_parts("method", method);
        let route_label = Label::new("route", route.to_owned());
        let counter_key = Key::from_parts(
            HTTP_REQUESTS,
            vec![
                method_label.clone(),
                route_label.clone(),
                Label::new("status", status.to_string()),
            ],
        );
        let histogram_key = Key::from_parts(HTTP_DURATION, vec![method_label, route_label]);
        HttpSeries {
            method,
            route: route.into(),
            status,
            requests: self.recorder.register_counter(&counter_key, &METADATA),
            duration: self.recorder.register_histogram(&histogram_key, &METADATA),
        }
    }

    /// The in-process (HTTP) families alone, in text format.
    pub fn render_http(&self) -> String {
        self.handle.render()
    }

    /// The `/metrics` page in Prometheus text format 0.0.4.
    pub async fn render(&self, engine: &Engine) -> Result<String, ApiError> {
        let deps = engine.deps();
        let store = deps.store.clone();
        let broker = deps.broker.clone();
        let stats = async move { store.stats().await.map_err(ApiError::from) };
        let depths = async move {
            let mut set = tokio::task::JoinSet::new();
            for (i, role) in Role::SPECIALISTS.into_iter().enumerate() {
                let broker = broker.clone();
                set.spawn(async move { (i, role, broker.depth(role).await) });
            }
            let mut depths = [(Role::Orchestrator, 0u64); Role::SPECIALISTS.len()];
            while let Some(joined) = set.join_next().await {
                let (i, role, depth) = joined.map_err(|e| {
                    ApiError::Internal(format!("reading a queue depth for /metrics failed: {e}"))
                })?;
                let depth = depth.map_err(|e| {
                    ApiError::Unavailable(format!(
                        "queue broker: cannot read the depth of {}: {e}; retry later",
                        role.queue()
                    ))
                })?;
                depths[i] = (role, depth);
            }
            Ok::<_, ApiError>(depths)
        };
        let (stats, depths) = tokio::try_join!(stats, depths)?;
        let mut out = self.render_http();
        render_state(&stats, &depths, &mut out);
        Ok(out)
    }
}

fn find<'a>(
    map: &'a HashMap<u64, Vec<HttpSeries>>,
    hash: u64,
    method: &str,
    route: &str,
    status: u16,
) -> Option<&'a HttpSeries> {
    map.get(&hash)?
        .iter()
        .find(|s| s.status == status && s.method == method && &*s.route == route)
}

/// The standard methods as themselves, anything else as `OTHER`.
fn normalize_method(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("OTHER")
}

/// Middleware: time every request and record it by method, route template and status.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    // Cheap clones: a standard `Method` and a `MatchedPath` (an `Arc<str>`)
    // copy no strings.
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let response = next.run(req).await;
    state.metrics.record_http(
        method.as_str(),
        route.as_ref().map_or("unmatched", |p| p.as_str()),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

// ---------------------------------------------------------------------------
// The state families.

/// Write the system's state — store aggregates and queue depths — as text
/// format families, each with `# HELP` and `# TYPE`.
///
/// Zero-valued series: every run status is always listed, tasks only where
/// non-zero (roles x statuses would be 90 mostly-zero series), queue depth of
/// every role given, gates of every kind x status (8 series).
pub fn render_state(stats: &Stats, depths: &[(Role, u64)], out: &mut String) {
    family(out, "orchestrator_runs", "gauge", "Runs by status.");
    for status in RunStatus::ALL {
        let n: u64 = stats
            .runs_by_status
            .iter()
            .filter(|(s, _)| s == status)
            .map(|(_, n)| n)
            .sum();
        sample(out, "orchestrator_runs", &[("status", status.as_str())], n);
    }

    family(
        out,
        "orchestrator_tasks",
        "gauge",
        "Tasks by role and status (only non-zero groups).",
    );
    for (role, status, n) in &stats.tasks_by_role_status {
        if *n > 0 {
            sample(
                out,
                "orchestrator_tasks",
                &[("role", role.as_str()), ("status", status.as_str())],
                n,
            );
        }
    }

    family(
        out,
        "orchestrator_queue_depth",
        "gauge",
        "Messages waiting on each role's queue.",
    );
    for (role, depth) in depths {
        sample(
            out,
            "orchestrator_queue_depth",
            &[("queue", role.queue()), ("role", role.as_str())],
            depth,
        );
    }

    family(
        out,
        "orchestrator_task_duration_seconds",
        "histogram",
        "Duration of finished task attempts, by role.",
    );
    for (role, hist) in &stats.task_durations {
        let labels = [("role", role.as_str())];
        let mut cumulative = 0u64;
        for (i, bound_ms) in TASK_DURATION_BUCKETS_MS.iter().enumerate() {
            cumulative += hist.buckets.get(i).copied().unwrap_or(0);
            let le = fmt_f64(*bound_ms as f64 / 1000.0);
            sample_le(
                out,
                "orchestrator_task_duration_seconds_bucket",
                &labels,
                &le,
                cumulative.min(hist.count),
            );
        }
        sample_le(
            out,
            "orchestrator_task_duration_seconds_bucket",
            &labels,
            "+Inf",
            hist.count,
        );
        sample(
            out,
            "orchestrator_task_duration_seconds_sum",
            &labels,
            fmt_f64(hist.sum_ms as f64 / 1000.0),
        );
        sample(
            out,
            "orchestrator_task_duration_seconds_count",
            &labels,
            hist.count,
        );
    }

    family(
        out,
        "orchestrator_llm_calls_total",
        "counter",
        "LLM calls journaled, by provider and model.",
    );
    for t in &stats.llm {
        sample(
            out,
            "orchestrator_llm_calls_total",
            &[("provider", &t.provider), ("model", &t.model)],
            t.calls,
        );
    }
    family(
        out,
        "orchestrator_llm_tokens_total",
        "counter",
        "LLM tokens, by provider, model and kind (input, output, cache_read, cache_write).",
    );
    for t in &stats.llm {
        for (kind, n) in [
            ("input", t.input_tokens),
            ("output", t.output_tokens),
            ("cache_read", t.cache_read_tokens),
            ("cache_write", t.cache_write_tokens),
        ] {
            sample(
                out,
                "orchestrator_llm_tokens_total",
                &[
                    ("provider", &t.provider),
                    ("model", &t.model),
                    ("kind", kind),
                ],
                n,
            );
        }
    }
    family(
        out,
        "orchestrator_llm_cost_usd_total",
        "counter",
        "LLM cost in US dollars, by provider and model.",
    );
    for t in &stats.llm {
        sample(
            out,
            "orchestrator_llm_cost_usd_total",
            &[("provider", &t.provider), ("model", &t.model)],
            fmt_f64(t.cost_usd),
        );
    }

    family(
        out,
        "orchestrator_gates",
        "gauge",
        "Quality gates by kind and status.",
    );
    for gate in GateKind::ALL {
        for status in GateStatus::ALL {
            let n: u64 = stats
                .gates_by_kind_status
                .iter()
                .filter(|(g, s, _)| *g == gate && s == status)
                .map(|(_, _, n)| n)
                .sum();
            sample(
                out,
                "orchestrator_gates",
                &[("gate", gate.as_str()), ("status", status.as_str())],
                n,
            );
        }
    }

    family(
        out,
        "orchestrator_dead_letters",
        "gauge",
        "Dead letters not yet replayed.",
    );
    sample(out, "orchestrator_dead_letters", &[], stats.dead_letters);

    family(
        out,
        "orchestrator_build_info",
        "gauge",
        "Build information; the value is always 1.",
    );
    sample(
        out,
        "orchestrator_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    escape_help(help, out);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    write_sample(out, name, labels, None, value);
}

fn sample_le(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    le: &str,
    value: impl std::fmt::Display,
) {
    write_sample(out, name, labels, Some(le), value);
}

fn write_sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    le: Option<&str>,
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let le = le.map(|le| ("le", le));
        for (i, (k, v)) in labels.iter().copied().chain(le).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label_value(v, out);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values: `\` -> `\\`, `"` -> `\"`, newline -> `\n`.
fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: `\` -> `\\`, newline -> `\n`.
fn escape_help(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A float as the text format writes it (`+Inf`, `-Inf`, `NaN`).
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

// ---------------------------------------------------------------------------
// Checking a page.

/// Check a page against the text format 0.0.4 grammar: every non-comment,
/// non-blank line is `name{label="value",...} value [timestamp]` with valid
/// names and escapes, every sample belongs to a family announced by a
/// `# TYPE` line before it (histogram and summary families own their
/// `_bucket`, `_sum` and `_count` samples), every family has `# HELP`, and no
/// family is announced twice. Used by tests and by the integration test on a
/// real page.
#[doc(hidden)]
pub fn check_exposition(page: &str) -> Result<(), String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: std::collections::HashSet<String> = Default::default();
    for (n, line) in page.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            if !valid_metric_name(name) {
                return Err(at("bad metric name in HELP".into()));
            }
            check_escapes(rest, false).map_err(at)?;
            if !helps.insert(name.to_string()) {
                return Err(at("second HELP for a family".into()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap_or_default(), parts.next());
            if !valid_metric_name(name) || parts.next().is_some() {
                return Err(at("malformed TYPE".into()));
            }
            let Some(kind @ ("counter" | "gauge" | "histogram" | "summary" | "untyped")) = kind
            else {
                return Err(at("unknown TYPE".into()));
            };
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(at("second TYPE for a family".into()));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name = parse_sample(line).map_err(at)?;
        let family = if types.contains_key(name) {
            name
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    match types.get(base).map(String::as_str) {
                        Some("histogram") => Some(base),
                        Some("summary") if *suffix != "_bucket" => Some(base),
                        _ => None,
                    }
                })
                .ok_or_else(|| at(format!("sample of {name} before or without its TYPE")))?
        };
        if !helps.contains(family) {
            return Err(at(format!(
                "family {family} has no HELP before its samples"
            )));
        }
    }
    if let Some(name) = types.keys().find(|t| !helps.contains(*t)) {
        return Err(format!("family {name} has a TYPE but no HELP"));
    }
    if let Some(name) = helps.iter().find(|h| !types.contains_key(*h)) {
        return Err(format!("family {name} has a HELP but no TYPE"));
    }
    Ok(())
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Only `\\`, `\n` (and in label values `\"`) are legal escapes.
fn check_escapes(s: &str, label_value: bool) -> Result<(), String> {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\' | 'n') => {}
                Some('"') if label_value => {}
                other => return Err(format!("bad escape \\{other:?}")),
            }
        }
    }
    Ok(())
}

/// Parse one sample line; returns its metric name.
fn parse_sample(line: &str) -> Result<&str, String> {
    let end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..end];
    if !valid_metric_name(name) {
        return Err("bad metric name".into());
    }
    let mut rest = &line[end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut s = after;
        let mut seen = Vec::new();
        loop {
            if let Some(r) = s.strip_prefix('}') {
                s = r;
                break;
            }
            let eq = s.find('=').ok_or("label without =")?;
            let label = &s[..eq];
            if !valid_label_name(label) {
                return Err(format!("bad label name {label:?}"));
            }
            if seen.contains(&label) {
                return Err(format!("label {label} twice"));
            }
            seen.push(label);
            s = s[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            // Find the closing quote, skipping escapes.
            let mut close = None;
            let mut escaped = false;
            for (i, c) in s.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        close = Some(i);
                        break;
                    }
                    (false, '\n') => return Err("raw newline in label value".into()),
                    _ => {}
                }
            }
            let close = close.ok_or("unterminated label value")?;
            check_escapes(&s[..close], true)?;
            s = &s[close + 1..];
            if let Some(r) = s.strip_prefix(',') {
                s = r;
            } else if !s.starts_with('}') {
                return Err("expected , or } after a label".into());
            }
        }
        rest = s;
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut parts = rest.split(' ');
    let value = parts.next().unwrap_or_default();
    let numeric = matches!(value, "NaN" | "+Inf" | "-Inf")
        || (value.parse::<f64>().is_ok() && !value.contains(['i', 'I', 'n', 'N']));
    if !numeric {
        return Err(format!("bad value {value:?}"));
    }
    if let Some(ts) = parts.next()
        && ts.parse::<i64>().is_err()
    {
        return Err(format!("bad timestamp {ts:?}"));
    }
    if parts.next().is_some() {
        return Err("trailing text".into());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use orch_core::TaskStatus;
    use orch_engine::store::{DurationHistogram, LlmTotals};

    use super::*;

    fn lines_of<'a>(page: &'a str, prefix: &str) -> Vec<&'a str> {
        page.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    fn small_stats() -> Stats {
        let mut buckets = vec![0u64; TASK_DURATION_BUCKETS_MS.len() + 1];
        buckets[0] = 1; // <= 10 ms
        buckets[2] = 2; // <= 100 ms
        buckets[12] = 1; // > 3600 s
        Stats {
            runs_by_status: vec![(RunStatus::Completed, 2), (RunStatus::Running, 1)],
            tasks_by_role_status: vec![
                (Role::BackendEngineer, TaskStatus::Succeeded, 3),
                (Role::TechLead, TaskStatus::Failed, 0),
            ],
            task_durations: vec![(
                Role::BackendEngineer,
                DurationHistogram {
                    buckets,
                    count: 4,
                    sum_ms: 3_600_250,
                },
            )],
            gates_by_kind_status: vec![(GateKind::CodeReview, GateStatus::Passed, 1)],
            dead_letters: 1,
            llm: vec![LlmTotals {
                provider: "scripted".into(),
                model: "claude-x".into(),
                calls: 5,
                input_tokens: 100,
                output_tokens: 40,
                cache_read_tokens: 7,
                cache_write_tokens: 0,
                cost_usd: 0.25,
            }],
        }
    }

    fn rendered(stats: &Stats, depths: &[(Role, u64)]) -> String {
        let mut out = String::new();
        render_state(stats, depths, &mut out);
        out
    }

    #[test]
    fn renders_exact_lines_for_a_small_stats() {
        let page = rendered(
            &small_stats(),
            &[(Role::BusinessAnalyst, 0), (Role::BackendEngineer, 3)],
        );
        check_exposition(&page).unwrap();
        assert_eq!(
            lines_of(&page, "orchestrator_runs"),
            [
                "orchestrator_runs{status=\"PENDING\"} 0",
                "orchestrator_runs{status=\"PLANNING\"} 0",
                "orchestrator_runs{status=\"RUNNING\"} 1",
                "orchestrator_runs{status=\"NEEDS_INPUT\"} 0",
                "orchestrator_runs{status=\"COMPLETED\"} 2",
                "orchestrator_runs{status=\"FAILED\"} 0",
                "orchestrator_runs{status=\"CANCELLED\"} 0",
            ]
        );
        assert_eq!(
            lines_of(&page, "orchestrator_tasks"),
            ["orchestrator_tasks{role=\"backend_engineer\",status=\"SUCCEEDED\"} 3"]
        );
        assert_eq!(
            lines_of(&page, "orchestrator_queue_depth"),
            [
                "orchestrator_queue_depth{queue=\"q_ba\",role=\"business_analyst\"} 0",
                "orchestrator_queue_depth{queue=\"q_be\",role=\"backend_engineer\"} 3",
            ]
        );
        assert_eq!(
            lines_of(&page, "orchestrator_llm_"),
            [
                "orchestrator_llm_calls_total{provider=\"scripted\",model=\"claude-x\"} 5",
                "orchestrator_llm_tokens_total{provider=\"scripted\",model=\"claude-x\",kind=\"input\"} 100",
                "orchestrator_llm_tokens_total{provider=\"scripted\",model=\"claude-x\",kind=\"output\"} 40",
                "orchestrator_llm_tokens_total{provider=\"scripted\",model=\"claude-x\",kind=\"cache_read\"} 7",
                "orchestrator_llm_tokens_total{provider=\"scripted\",model=\"claude-x\",kind=\"cache_write\"} 0",
                "orchestrator_llm_cost_usd_total{provider=\"scripted\",model=\"claude-x\"} 0.25",
            ]
        );
        assert_eq!(
            lines_of(&page, "orchestrator_gates"),
            [
                "orchestrator_gates{gate=\"code_review\",status=\"PENDING\"} 0",
                "orchestrator_gates{gate=\"code_review\",status=\"PASSED\"} 1",
                "orchestrator_gates{gate=\"code_review\",status=\"FAILED\"} 0",
                "orchestrator_gates{gate=\"code_review\",status=\"WAIVED\"} 0",
                "orchestrator_gates{gate=\"security_review\",status=\"PENDING\"} 0",
                "orchestrator_gates{gate=\"security_review\",status=\"PASSED\"} 0",
                "orchestrator_gates{gate=\"security_review\",status=\"FAILED\"} 0",
                "orchestrator_gates{gate=\"security_review\",status=\"WAIVED\"} 0",
            ]
        );
        assert_eq!(
            lines_of(&page, "orchestrator_dead_letters"),
            ["orchestrator_dead_letters 1"]
        );
        assert_eq!(
            lines_of(&page, "orchestrator_build_info"),
            [format!(
                "orchestrator_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )]
        );
        assert!(page.contains(
            "# HELP orchestrator_runs Runs by status.\n# TYPE orchestrator_runs gauge\n"
        ));
        for family in [
            "orchestrator_runs",
            "orchestrator_tasks",
            "orchestrator_queue_depth",
            "orchestrator_task_duration_seconds",
            "orchestrator_llm_calls_total",
            "orchestrator_llm_tokens_total",
            "orchestrator_llm_cost_usd_total",
            "orchestrator_gates",
            "orchestrator_dead_letters",
            "orchestrator_build_info",
        ] {
            assert_eq!(
                page.matches(&format!("# TYPE {family} ")).count(),
                1,
                "{family}"
            );
        }
    }

    #[test]
    fn duration_buckets_become_cumulative_seconds() {
        let page = rendered(&small_stats(), &[]);
        assert_eq!(
            lines_of(&page, "orchestrator_task_duration_seconds"),
            [
                "orchestrator_task_duration_seconds_bucket{role=\"backend_engineer\",le=\"0.01\"} 1",
                "orchestrator_task_duration_seconds_bucket{role=\"backend_engineer\",le=\"0.05\"} 1",
                "orchestrator_task_duration_seconds_bucket{role=\"backend_engineer\",le=\"0.1\"} 3",
                "orchestrator_task_duration_seconds_bucket{role=\"backend_engineer\",le=\"0.5\"} 3",
                "orchestrator_task_duration_seconds_bucket{role=\"backend_engineer\",le=\"1\"} 3",
                "orchestrator_task_duration_seconds_bucket{role=\"backend_engineer\",le=\"5\"} 3",
                "orchestrator_task_duration_seconds_bucket{role=\"backend_engineer\",le=\"10\"} 3",
                "orchestrator_task_duration_seconds_bucket{role=\"backend_engineer\",le=\"30\"} 3",
                "orchestrator_task_duration_seconds_bucket{role=\"backend_engineer\",le=\"60\"} 3",
                "orchestrator_task_duration_seconds_bucket{role=\"backend_engineer\",le=\"300\"} 3",
                "orchestrator_task_duration_seconds_bucket{role=\"backend_engineer\",le=\"900\"} 3",
                "orchestrator_task_duration_seconds_bucket{role=\"backend_engineer\",le=\"3600\"} 3",
                "orchestrator_task_duration_seconds_bucket{role=\"backend_engineer\",le=\"+Inf\"} 4",
                "orchestrator_task_duration_seconds_sum{role=\"backend_engineer\"} 3600.25",
                "orchestrator_task_duration_seconds_count{role=\"backend_engineer\"} 4",
            ]
        );
    }

    #[test]
    fn short_or_inconsistent_bucket_lists_stay_monotonic() {
        let stats = Stats {
            task_durations: vec![(
                Role::TechLead,
                DurationHistogram {
                    buckets: vec![5],
                    count: 2,
                    sum_ms: 10,
                },
            )],
            ..Stats::default()
        };
        let page = rendered(&stats, &[]);
        check_exposition(&page).unwrap();
        let values: Vec<u64> = lines_of(&page, "orchestrator_task_duration_seconds_bucket")
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(values.len(), TASK_DURATION_BUCKETS_MS.len() + 1);
        assert!(values.iter().all(|v| *v == 2), "{values:?}");
    }

    #[test]
    fn label_values_are_escaped() {
        let stats = Stats {
            llm: vec![LlmTotals {
                provider: "a\"b".into(),
                model: "c\\d\ne".into(),
                calls: 1,
                ..LlmTotals::default()
            }],
            ..Stats::default()
        };
        let page = rendered(&stats, &[]);
        check_exposition(&page).unwrap();
        assert_eq!(
            lines_of(&page, "orchestrator_llm_calls_total{"),
            ["orchestrator_llm_calls_total{provider=\"a\\\"b\",model=\"c\\\\d\\ne\"} 1"]
        );
    }

    #[test]
    fn empty_stats_render_a_valid_page() {
        let page = rendered(&Stats::default(), &[]);
        check_exposition(&page).unwrap();
        assert!(page.contains("orchestrator_runs{status=\"COMPLETED\"} 0\n"));
        assert!(page.contains("orchestrator_dead_letters 0\n"));
    }

    #[test]
    fn floats_use_the_text_format_spellings() {
        assert_eq!(fmt_f64(f64::INFINITY), "+Inf");
        assert_eq!(fmt_f64(f64::NEG_INFINITY), "-Inf");
        assert_eq!(fmt_f64(f64::NAN), "NaN");
        assert_eq!(fmt_f64(0.5), "0.5");
        assert_eq!(fmt_f64(3.0), "3");
    }

    #[test]
    fn record_http_counts_and_times_requests() {
        let m = Metrics::new();
        m.record_http("GET", "/runs/{id}", 200, Duration::from_millis(3));
        m.record_http("GET", "/runs/{id}", 200, Duration::from_millis(30));
        m.record_http("POST", "/runs", 201, Duration::from_micros(100));
        let page = m.render_http();
        check_exposition(&page).unwrap();
        assert!(
            page.contains(
                "orchestrator_http_requests_total{method=\"GET\",route=\"/runs/{id}\",status=\"200\"} 2\n"
            ),
            "{page}"
        );
        assert!(
            page.contains(
                "orchestrator_http_request_duration_seconds_count{method=\"GET\",route=\"/runs/{id}\"} 2\n"
            ),
            "{page}"
        );
        assert!(
            page.contains(
                "orchestrator_http_request_duration_seconds_bucket{method=\"GET\",route=\"/runs/{id}\",le=\"0.005\"} 1\n"
            ),
            "{page}"
        );
        assert!(
            page.contains(
                "orchestrator_http_request_duration_seconds_bucket{method=\"GET\",route=\"/runs/{id}\",le=\"+Inf\"} 2\n"
            ),
            "{page}"
        );
        assert!(
            page.contains(
                "orchestrator_http_request_duration_seconds_bucket{method=\"POST\",route=\"/runs\",le=\"0.0005\"} 1\n"
            ),
            "{page}"
        );
        assert!(page.contains("# HELP orchestrator_http_requests_total "));
        assert!(page.contains("# TYPE orchestrator_http_request_duration_seconds histogram"));
    }

    #[test]
    fn registries_are_per_instance_and_odd_methods_are_folded() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.record_http("BREW", "unmatched", 404, Duration::from_millis(1));
        assert!(
            a.render_http().contains(
                "orchestrator_http_requests_total{method=\"OTHER\",route=\"unmatched\",status=\"404\"} 1"
            )
        );
        assert!(
            !b.render_http()
                .contains("orchestrator_http_requests_total{")
        );
    }

    #[test]
    fn upkeep_keeps_counts_exact() {
        let m = Metrics::new();
        let n = UPKEEP_EVERY + 10;
        for _ in 0..n {
            m.record_http("GET", "/health", 200, Duration::from_micros(700));
        }
        let page = m.render_http();
        assert!(page.contains(&format!(
            "orchestrator_http_request_duration_seconds_count{{method=\"GET\",route=\"/health\"}} {n}\n"
        )));
        assert!(page.contains(&format!(
            "orchestrator_http_requests_total{{method=\"GET\",route=\"/health\",status=\"200\"}} {n}\n"
        )));
    }

    #[test]
    fn a_whole_page_passes_the_checker() {
        let m = Metrics::new();
        m.record_http("GET", "/metrics", 200, Duration::from_millis(2));
        let mut page = m.render_http();
        render_state(&small_stats(), &[(Role::CodeReviewer, 1)], &mut page);
        check_exposition(&page).unwrap();
    }

    #[test]
    fn the_checker_rejects_malformed_pages() {
        let ok = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"b\"} 1\n";
        check_exposition(ok).unwrap();
        for bad in [
            // no HELP
            "# TYPE x counter\nx 1\n",
            // no TYPE
            "# HELP x X.\nx 1\n",
            // sample before its TYPE
            "x 1\n# HELP x X.\n# TYPE x gauge\n",
            // unescaped quote
            "# HELP x X.\n# TYPE x gauge\nx{a=\"b\"c\"} 1\n",
            // bad escape
            "# HELP x X.\n# TYPE x gauge\nx{a=\"b\\t\"} 1\n",
            // bad value
            "# HELP x X.\n# TYPE x gauge\nx{a=\"b\"} one\n",
            // bad label name
            "# HELP x X.\n# TYPE x gauge\nx{1a=\"b\"} 1\n",
            // _bucket of a gauge
            "# HELP x X.\n# TYPE x gauge\nx_bucket{le=\"1\"} 1\n",
            // twice announced
            "# HELP x X.\n# TYPE x gauge\n# TYPE x gauge\nx 1\n",
            // missing space
            "# HELP x X.\n# TYPE x gauge\nx{a=\"b\"}1\n",
        ] {
            assert!(check_exposition(bad).is_err(), "accepted {bad:?}");
        }
        check_exposition(
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n",
        )
        .unwrap();
    }
}
