//! The report's page: inline CSS and SVG, every figure sized by the report's constants, not
//! by the number of jobs.

use std::fmt::Write as _;

use super::summary::{
    COLUMNS, MAX_ROWS, SLICES_PER_BAR, Summary, Timeline, assign_rows, bucket_floor, duration,
    span_of,
};

/// Width of the figures' plotting area, in pixels.
const WIDTH: f64 = 960.0;
const LEFT: f64 = 56.0;

const STYLE: &str = "
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1040px; color: #1d2430; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 6px; }
.sub { color: #5b6575; margin: 0 0 16px; }
.facts { display: flex; flex-wrap: wrap; gap: 10px; }
.fact { background: #f1f4f8; border-radius: 6px; padding: 8px 12px; min-width: 120px; }
.fact b { display: block; font-size: 18px; }
svg { display: block; background: #fbfcfd; border: 1px solid #e3e7ed; border-radius: 4px; }
svg text { font: 11px system-ui, sans-serif; fill: #5b6575; }
table { border-collapse: collapse; margin-top: 4px; }
td, th { padding: 3px 10px; border-bottom: 1px solid #e3e7ed; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 12px; }
.note { color: #5b6575; font-size: 13px; }
";

/// `n` with its thousands separated: 10,000,000.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `text` escaped for HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page.
pub(super) fn page(
    name: &str,
    summary: &Summary,
    timeline: Timeline,
    stats: Option<&serde_json::Value>,
) -> String {
    let mut html = String::with_capacity(256 * 1024);
    let _ = writeln!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>corral report: {}</title><style>{STYLE}</style></head><body>",
        escape(name)
    );
    let _ = writeln!(
        html,
        "<h1>corral report</h1><p class=\"sub\">{}</p>",
        escape(name)
    );
    facts(&mut html, summary, &timeline, stats);
    timeline_figure(&mut html, summary, timeline.jobs.clone(), &timeline);
    throughput_figure(&mut html, summary, &timeline);
    histogram_figure(&mut html, summary);
    outcomes_table(&mut html, summary, stats);
    slowest_table(&mut html, summary);
    html.push_str("</body></html>\n");
    html
}

fn facts(
    html: &mut String,
    summary: &Summary,
    timeline: &Timeline,
    stats: Option<&serde_json::Value>,
) {
    let (_, span) = span_of(summary);
    let failed = summary.jobs - summary.ok;
    let busy: f64 = timeline.busy.iter().sum();
    let mean = summary.runtime_total / summary.jobs.max(1) as f64;
    let mut facts = vec![
        ("jobs", thousands(summary.jobs)),
        ("ok", thousands(summary.ok)),
        ("failed", thousands(failed)),
        ("span", duration(span)),
        (
            "jobs/s",
            thousands((summary.jobs as f64 / span).round() as u64),
        ),
        ("workers busy, on average", format!("{:.2}", busy / span)),
        (
            "mean job time",
            if mean < 1e-3 {
                "under 1 ms".to_owned()
            } else {
                duration(mean)
            },
        ),
    ];
    if let Some(stats) = stats {
        for (key, label) in [("restarts", "restarts"), ("recycled", "recycled")] {
            if let Some(n) = stats.get(key).and_then(serde_json::Value::as_u64) {
                facts.push((label, n.to_string()));
            }
        }
        if let Some(end) = stats.get("end").and_then(serde_json::Value::as_str) {
            facts.push(("run ended", end.to_owned()));
        }
    }
    html.push_str("<div class=\"facts\" id=\"facts\">");
    for (label, value) in facts {
        let _ = write!(
            html,
            "<div class=\"fact\"><b>{}</b>{}</div>",
            escape(&value),
            escape(label)
        );
    }
    html.push_str("</div>\n");
    if summary.histogram[0] * 2 > summary.jobs {
        html.push_str(
            "<p class=\"note\">Most jobs took under a millisecond, which a joblog writes as 0: \
             the time they kept workers busy is not seen below.</p>",
        );
    }
    if summary.unreadable > 0 {
        let _ = write!(
            html,
            "<p class=\"note\">{} lines of the joblog could not be read and are left out.</p>",
            summary.unreadable
        );
    }
}

/// Ticks along the time axis of a figure `height` high.
fn time_axis(svg: &mut String, span: f64, height: f64) {
    for i in 0..=4 {
        let x = LEFT + WIDTH * f64::from(i) / 4.0;
        let t = span * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{height:.1}\" stroke=\"#e3e7ed\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            height + 14.0,
            escape(&duration(t)),
        );
    }
}

fn timeline_figure(
    html: &mut String,
    summary: &Summary,
    jobs: Option<Vec<(f64, f64, bool, u64)>>,
    timeline: &Timeline,
) {
    let (t0, span) = span_of(summary);
    let x_of = |t: f64| LEFT + (t - t0) / span * WIDTH;
    html.push_str("<h2>Timeline</h2>\n");
    let mut svg = String::new();
    let height;
    match jobs {
        Some(mut jobs) => {
            let (rows, count) = assign_rows(&mut jobs);
            let row_height = (240.0 / count as f64).clamp(2.0, 18.0);
            height = row_height * count as f64;
            let _ = write!(
                html,
                "<p class=\"note\">Each bar is a job, green if it succeeded, red if not; each row \
                 is a worker's place, the jobs in it as a worker would have run them one after \
                 another ({count} rows).</p>"
            );
            for (&(start, end, ok, seq), row) in jobs.iter().zip(rows) {
                let w = ((end - start) / span * WIDTH).max(0.6);
                let color = if ok { "#3a9d5d" } else { "#d0453c" };
                let _ = write!(
                    svg,
                    "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{w:.2}\" height=\"{:.2}\" fill=\"{color}\"><title>line {seq}: {}</title></rect>",
                    x_of(start),
                    row as f64 * row_height,
                    (row_height - 1.0).max(1.0),
                    escape(&duration(end - start)),
                );
            }
        }
        None => {
            // Busy workers in each slice, as rows: row k is busy for the share of the slice
            // during which more than k workers were.
            let width = span / COLUMNS as f64;
            let peak = timeline
                .busy
                .iter()
                .map(|b| b / width)
                .fold(0.0, f64::max)
                .ceil()
                .max(1.0) as usize;
            let per_row = peak.div_ceil(MAX_ROWS);
            let count = peak.div_ceil(per_row);
            let row_height = (240.0 / count as f64).clamp(3.0, 18.0);
            height = row_height * count as f64;
            let _ = write!(
                html,
                "<p class=\"note\">{} jobs are too many to draw one by one: each row is {}, \
                 shaded by the share of each of {COLUMNS} slices of the run they were busy \
                 (up to {peak} workers busy at once).</p>",
                thousands(summary.jobs),
                if per_row == 1 {
                    "a worker's place".to_owned()
                } else {
                    format!("{per_row} workers' places")
                },
            );
            let cell = WIDTH / COLUMNS as f64;
            for (c, busy) in timeline.busy.iter().enumerate() {
                let busy = busy / width;
                for row in 0..count {
                    let below = (row * per_row) as f64;
                    let share = ((busy - below) / per_row as f64).clamp(0.0, 1.0);
                    if share < 0.02 {
                        continue;
                    }
                    let _ = write!(
                        svg,
                        "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{:.2}\" fill=\"#3a7bd5\" fill-opacity=\"{share:.2}\"/>",
                        LEFT + c as f64 * cell,
                        row as f64 * row_height,
                        cell + 0.05,
                        (row_height - 1.0).max(1.0),
                    );
                }
            }
        }
    }
    time_axis(&mut svg, span, height);
    let _ = writeln!(
        html,
        "<svg id=\"timeline\" width=\"{:.0}\" height=\"{:.0}\" viewBox=\"0 0 {:.0} {:.0}\" role=\"img\" aria-label=\"timeline of jobs per worker\">{svg}</svg>",
        LEFT + WIDTH + 16.0,
        height + 22.0,
        LEFT + WIDTH + 16.0,
        height + 22.0,
    );
}

fn throughput_figure(html: &mut String, summary: &Summary, timeline: &Timeline) {
    let (_, span) = span_of(summary);
    let width = span / COLUMNS as f64 * SLICES_PER_BAR as f64;
    let rates: Vec<f64> = timeline
        .finished
        .chunks(SLICES_PER_BAR)
        .map(|bar| bar.iter().sum::<u64>() as f64 / width)
        .collect();
    let peak = rates.iter().copied().fold(0.0, f64::max).max(1e-9);
    let height = 140.0;
    let mut svg = String::new();
    let cell = WIDTH / rates.len() as f64;
    for (c, rate) in rates.iter().enumerate() {
        if *rate <= 0.0 {
            continue;
        }
        let h = rate / peak * height;
        let _ = write!(
            svg,
            "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{h:.2}\" fill=\"#3a7bd5\"/>",
            LEFT + c as f64 * cell,
            height - h,
            cell + 0.05,
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"10\" text-anchor=\"end\">{peak:.0}/s</text><text x=\"{:.1}\" y=\"{height:.1}\" text-anchor=\"end\">0</text>",
        LEFT - 4.0,
        LEFT - 4.0
    );
    time_axis(&mut svg, span, height);
    html.push_str(
        "<h2>Throughput</h2><p class=\"note\">Jobs finished per second, over the run.</p>\n",
    );
    let _ = writeln!(
        html,
        "<svg id=\"throughput\" width=\"{:.0}\" height=\"{:.0}\" role=\"img\" aria-label=\"throughput over time\">{svg}</svg>",
        LEFT + WIDTH + 16.0,
        height + 22.0
    );
}

fn histogram_figure(html: &mut String, summary: &Summary) {
    let buckets = &summary.histogram;
    let first = buckets.iter().position(|&n| n > 0).unwrap_or(0);
    let last = buckets.iter().rposition(|&n| n > 0).unwrap_or(0);
    let shown = &buckets[first..=last];
    let peak = shown.iter().copied().max().unwrap_or(1).max(1) as f64;
    let height = 160.0;
    let bar = (WIDTH / shown.len() as f64).min(48.0);
    let mut svg = String::new();
    for (i, &n) in shown.iter().enumerate() {
        let index = first + i;
        let h = n as f64 / peak * height;
        let x = LEFT + i as f64 * bar;
        let label = match index {
            0 => "< 1 ms".to_owned(),
            i => format!("≥ {}", duration(bucket_floor(i))),
        };
        let _ = write!(
            svg,
            "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{h:.2}\" fill=\"#7a5cc7\"><title>{}: {n} jobs</title></rect>",
            x + 1.0,
            height - h,
            (bar - 2.0).max(1.0),
            escape(&label),
        );
        if i % 2 == 0 || shown.len() <= 12 {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x + bar / 2.0,
                height + 14.0,
                escape(&label.replace("≥ ", ""))
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"10\" text-anchor=\"end\">{peak:.0}</text>",
        LEFT - 4.0
    );
    html.push_str(
        "<h2>Job times</h2><p class=\"note\">How many jobs took how long (each bar a quarter of a power of ten).</p>\n",
    );
    let _ = writeln!(
        html,
        "<svg id=\"histogram\" width=\"{:.0}\" height=\"{:.0}\" role=\"img\" aria-label=\"distribution of job times\">{svg}</svg>",
        LEFT + WIDTH + 16.0,
        height + 22.0
    );
}

fn outcomes_table(html: &mut String, summary: &Summary, stats: Option<&serde_json::Value>) {
    html.push_str(
        "<h2>Outcomes</h2>\n<table id=\"failures\"><tr><th>how jobs ended</th><th>jobs</th></tr>",
    );
    let mut outcomes: Vec<_> = summary.outcomes.iter().collect();
    outcomes.sort_by_key(|(name, n)| (name.as_str() != "ok", std::cmp::Reverse(**n)));
    for (name, n) in outcomes {
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"n\">{n}</td></tr>",
            escape(name)
        );
    }
    html.push_str("</table>\n");
    let Some(stats) = stats else {
        html.push_str("<p class=\"note\">Give the run's <code>--stats</code> file with <code>--stats</code> for failures by kind and restarts.</p>\n");
        return;
    };
    html.push_str("<table id=\"kinds\"><tr><th>failures by kind (--stats)</th><th>jobs</th></tr>");
    if let Some(kinds) = stats
        .get("failed_by_kind")
        .and_then(serde_json::Value::as_object)
    {
        for (kind, n) in kinds {
            let _ = write!(
                html,
                "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
                escape(kind),
                n.as_u64().unwrap_or(0)
            );
        }
    }
    for key in ["restarts", "recycled", "not_run", "unwritten"] {
        if let Some(n) = stats.get(key).and_then(serde_json::Value::as_u64) {
            let _ = write!(
                html,
                "<tr><td>{}</td><td class=\"n\">{n}</td></tr>",
                escape(&key.replace('_', " "))
            );
        }
    }
    html.push_str("</table>\n");
}

fn slowest_table(html: &mut String, summary: &Summary) {
    html.push_str("<h2>Slowest jobs</h2>\n<table id=\"slowest\"><tr><th>line</th><th>time</th><th>ended</th><th>command</th></tr>");
    for std::cmp::Reverse(slow) in summary.slowest.clone().into_sorted_vec() {
        let _ = write!(
            html,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td><code>{}</code></td></tr>",
            slow.seq,
            escape(&duration(slow.runtime)),
            escape(&slow.outcome),
            escape(&slow.command)
        );
    }
    html.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_thousands_separators_and_text_is_escaped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(10_000_000), "10,000,000");
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
