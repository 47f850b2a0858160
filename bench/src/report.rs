//! Figures: percentiles, one row per measured run, a readable table and JSON.

use serde::Serialize;

/// One measured run of one scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) backend: String,
    /// `relay` or `baseline`.
    pub(crate) server: String,
    pub(crate) events_per_s: f64,
    pub(crate) ingest_ms: Option<Percentiles>,
    pub(crate) end_to_end_ms: Option<Percentiles>,
    pub(crate) deliveries_per_s: Option<f64>,
    pub(crate) backlog_bounded: Option<bool>,
    pub(crate) cpu_us_per_event: Option<f64>,
    pub(crate) peak_rss_mib: Option<f64>,
    pub(crate) note: String,
}

/// A row as JSON: its fields, and its CPU also in the unit, seconds per 1,000 events
/// (µs per event ÷ 1,000).
#[derive(Serialize)]
struct JsonRow<'a> {
    #[serde(flatten)]
    row: &'a Row,
    cpu_s_per_1000_events: Option<f64>,
}

/// `rows` as pretty-printed JSON.
pub(crate) fn json(rows: &[Row]) -> serde_json::Result<Vec<u8>> {
    let rows: Vec<JsonRow<'_>> = rows
        .iter()
        .map(|row| JsonRow { row, cpu_s_per_1000_events: row.cpu_us_per_event.map(|us| us / 1000.0) })
        .collect();
    serde_json::to_vec_pretty(&rows)
}

/// p50, p99 and p99.9 in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
}

impl Percentiles {
    /// From microsecond samples.
    pub(crate) fn of(mut micros: Vec<u64>) -> Option<Self> {
        if micros.is_empty() {
            return None;
        }
        micros.sort_unstable();
        let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        Some(Self { p50: at(0.5), p99: at(0.99), p999: at(0.999) })
    }
}

/// The median of some figures.
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The summary of an A/B alternated over rounds: each side's p99 end to end (the median over
/// the rounds, in ms) and the median of the rounds' B ÷ A ratios. `sides` names A and B.
pub(crate) fn paired_p99_row(scenario: &str, backend: &str, p99: [Vec<f64>; 2], sides: [&str; 2]) -> Row {
    let rounds = p99[0].len();
    let ratio = median(p99[1].iter().zip(&p99[0]).map(|(b, a)| b / a).collect());
    let [a, b] = p99.map(median);
    let [side_a, side_b] = sides;
    Row {
        scenario: scenario.into(),
        backend: backend.into(),
        server: "median".into(),
        note: format!(
            "p99 end to end: {a:.2} ms {side_a}, {b:.2} ms {side_b} (medians); the median of the rounds' ratios {ratio:.2}× ({rounds} runs)"
        ),
        ..Row::default()
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

fn triple(p: Option<Percentiles>) -> String {
    p.map_or_else(|| "-".to_owned(), |p| format!("{:.2}/{:.2}/{:.2}", p.p50, p.p99, p.p999))
}

/// A readable table of `rows`.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<10} {:<8} {:<8} {:>10} {:>22} {:>22} {:>10} {:>7} {:>9} {:>8}  note\n",
        "scenario",
        "backend",
        "server",
        "events/s",
        "ingest p50/p99/p99.9",
        "e2e p50/p99/p99.9 ms",
        "deliv/s",
        "bounded",
        "cpu µs/ev",
        "rss MiB"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<10} {:<8} {:<8} {:>10.0} {:>22} {:>22} {:>10} {:>7} {:>9} {:>8}  {}\n",
            r.scenario,
            r.backend,
            r.server,
            r.events_per_s,
            triple(r.ingest_ms),
            triple(r.end_to_end_ms),
            cell(r.deliveries_per_s),
            r.backlog_bounded.map_or("-", |b| if b { "yes" } else { "NO" }),
            cell(r.cpu_us_per_event),
            cell(r.peak_rss_mib),
            r.note
        ));
    }
    out
}
