//! The live campaign page: plain HTML that refreshes itself, the progress chart inline as SVG,
//! the leaderboard, spend against budget, workers, conditions, recent events and a link to
//! results.tsv. No JavaScript.
//!
//! Everything shown came from workers, models or users (names, descriptions, error texts), so
//! every string goes through [`escape`]; the only markup inserted as it is, is the chart's SVG,
//! which plotters writes with its text escaped.

use std::fmt::Write;

use crate::crd::{ExperimentCampaign, ExperimentCampaignStatus};

use super::chart::{self, ChartData};
use super::history::{ResultHistory, short_hash};
use super::summary::Summary;

/// Seconds between automatic refreshes.
pub const REFRESH_SECONDS: u32 = 5;

/// HTML-escapes text for element content and quoted attributes. (Five replacements; a template
/// engine would be a large dependency for two pages.)
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A recent event of the campaign.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventLine {
    /// When (RFC 3339).
    pub time: String,
    /// `Normal` or `Warning`.
    pub kind: String,
    /// Reason, e.g. `NewBest`.
    pub reason: String,
    /// The message.
    pub note: String,
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1240px}\
table{border-collapse:collapse;margin:8px 0 20px}td,th{padding:4px 10px;border-bottom:1px solid #ddd;\
text-align:left;font-size:14px}th{background:#f4f4f4}.num{text-align:right;font-family:monospace}\
.warn{color:#b00}svg{max-width:100%;height:auto}h2{margin-top:28px}";

fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <link rel=\"icon\" href=\"data:,\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(title)
    );
}

/// Writes a table; every cell is text and is escaped.
fn table<const N: usize>(out: &mut String, id: &str, header: [&str; N], rows: Vec<[String; N]>) {
    let _ = write!(out, "<table id=\"{id}\"><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(&cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// A titled table.
fn section<const N: usize>(
    out: &mut String,
    title: &str,
    id: &str,
    header: [&str; N],
    rows: impl Iterator<Item = [String; N]>,
) {
    let _ = writeln!(out, "<h2>{}</h2>", escape(title));
    table(out, id, header, rows.collect());
}

/// `/campaigns`: every campaign with its phase, progress, best and spend.
pub fn index(campaigns: &[ExperimentCampaign]) -> String {
    let mut out = String::new();
    head(&mut out, "autoresearch campaigns");
    out.push_str("<h1>Campaigns</h1>\n<table id=\"campaigns\"><tr><th>namespace</th><th>name</th>\
                  <th>phase</th><th>done</th><th>running</th><th>best val_bpb</th><th>spent</th></tr>\n");
    for c in campaigns {
        let ns = c.metadata.namespace.clone().unwrap_or_default();
        let name = c.metadata.name.clone().unwrap_or_default();
        let s = c.status.clone().unwrap_or_default();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><a href=\"/campaigns/{}/{}\">{}</a></td><td>{}</td><td>{}</td>\
             <td>{}</td><td class=\"num\">{}</td><td>{} / {} USDC</td></tr>",
            escape(&ns),
            escape(&ns),
            escape(&name),
            escape(&name),
            escape(
                &s.phase
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "Pending".into())
            ),
            escape(s.progress.as_deref().unwrap_or("")),
            s.running,
            s.best
                .map(|b| format!("{:.6}", b.val_bpb))
                .unwrap_or_default(),
            escape(s.spent.as_deref().unwrap_or("0")),
            escape(&c.spec.budget.total),
        );
    }
    out.push_str("</table>\n</body></html>\n");
    out
}

/// `/campaigns/<ns>/<name>`: one campaign.
pub fn campaign(c: &ExperimentCampaign, history: &ResultHistory, events: &[EventLine]) -> String {
    let ns = c.metadata.namespace.clone().unwrap_or_default();
    let name = c.metadata.name.clone().unwrap_or_default();
    let s = c.status.clone().unwrap_or_default();
    let mut out = String::new();
    head(&mut out, &format!("{ns}/{name}: autoresearch"));
    let phase = s
        .phase
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "Pending".into());
    let _ = writeln!(
        out,
        "<h1>{}/{}</h1>\n<p id=\"headline\">{} · {} experiments · {} running · spent {} of {} USDC \
         (in flight {}) · <a href=\"/campaigns/{}/{}/results.tsv\">results.tsv</a> · \
         <a href=\"/campaigns\">all campaigns</a></p>",
        escape(&ns),
        escape(&name),
        escape(&phase),
        escape(s.progress.as_deref().unwrap_or("0")),
        s.running,
        escape(s.spent.as_deref().unwrap_or("0")),
        escape(&c.spec.budget.total),
        escape(s.in_flight.as_deref().unwrap_or("0")),
        escape(&ns),
        escape(&name),
    );
    out.push_str("<div id=\"chart\">");
    match chart::svg(&ChartData::new(history)) {
        Ok(svg) => out.push_str(&svg),
        Err(e) => {
            let _ = write!(out, "<p class=\"warn\">{}</p>", escape(&e.to_string()));
        }
    }
    out.push_str("</div>\n");
    sections(&mut out, c, history, events);
    out.push_str("</body></html>\n");
    out
}

fn sections(
    out: &mut String,
    c: &ExperimentCampaign,
    history: &ResultHistory,
    events: &[EventLine],
) {
    let s = c.status.clone().unwrap_or_default();
    leaderboard(out, &s, history);
    workers(out, &s, history);
    let conditions = s.conditions.iter().map(|c| {
        let c = c.clone();
        [c.type_, c.status, c.reason, c.message]
    });
    let events = events.iter().map(|e| {
        let e = e.clone();
        [e.time, e.kind, e.reason, e.note]
    });
    let columns = ["type", "status", "reason", "message"];
    section(out, "Conditions", "conditions", columns, conditions);
    let columns = ["time", "type", "reason", "message"];
    section(out, "Recent events", "events", columns, events);
}

/// Status's leaderboard, each run labelled with what changed as the history says.
fn leaderboard(out: &mut String, s: &ExperimentCampaignStatus, history: &ResultHistory) {
    let labels: std::collections::HashMap<&str, &str> = history
        .entries
        .iter()
        .map(|e| (e.row.experiment_id.as_str(), e.label.as_str()))
        .collect();
    let rows = s.leaderboard.iter().enumerate().map(|(i, r)| {
        [
            (i + 1).to_string(),
            format!("{:.6}", r.val_bpb),
            r.train_hash.as_deref().map(short_hash).unwrap_or_default(),
            r.experiment_id.clone(),
            labels
                .get(r.experiment_id.as_str())
                .copied()
                .unwrap_or("")
                .to_string(),
            r.worker.clone(),
        ]
    });
    section(
        out,
        "Leaderboard",
        "leaderboard",
        [
            "#",
            "val_bpb",
            "train",
            "experiment",
            "description",
            "worker",
        ],
        rows,
    );
}

/// Status's worker counts, then each worker's record in the history.
fn workers(out: &mut String, s: &ExperimentCampaignStatus, history: &ResultHistory) {
    out.push_str("<h2>Workers</h2>\n");
    if let Some(w) = &s.workers {
        let _ = writeln!(
            out,
            "<p>{} discovered, {} eligible, {} busy, {} cooling down</p>",
            w.discovered, w.eligible, w.busy, w.cooling_down
        );
    }
    let summary = Summary::new(history, None);
    let rows = summary.workers.iter().map(|w| {
        [
            w.endpoint.clone(),
            w.runs.to_string(),
            w.failures.to_string(),
            w.price_usdc.clone().unwrap_or_default(),
            format!("{}/{}", w.agreements, w.agreements + w.disagreements),
        ]
    });
    table(
        out,
        "workers",
        ["endpoint", "runs", "failures", "price USDC", "agreements"],
        rows.collect(),
    );
}
