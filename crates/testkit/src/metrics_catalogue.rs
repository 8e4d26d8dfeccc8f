//! `docs/metrics.md` against what a `/metrics` endpoint really exposes, so the catalogue cannot
//! drift: every exposed metric is listed with its type and labels, and nothing listed is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// One metric as the catalogue lists it or an exposition shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    /// The name a query uses: counters with their `_total`, histograms without their suffixes.
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: String,
    /// Label names (a histogram's `le` left out); `None` when the exposition had no sample to
    /// read them from.
    pub labels: Option<BTreeSet<String>>,
}

/// The catalogue's table under the `## ` heading that starts with `section`: rows whose first cell
/// is a backticked metric name, then its type, then its labels (backticked, or `-` for none).
pub fn catalogue(doc: &str, section: &str) -> Vec<Metric> {
    let mut in_section = false;
    let mut metrics = Vec::new();
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            in_section = heading.starts_with(section);
            continue;
        }
        if !in_section || !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "", name, type, labels, meaning, ""
        let (Some(name), Some(kind), Some(labels)) = (cells.get(1), cells.get(2), cells.get(3))
        else {
            continue;
        };
        metrics.push(Metric {
            name: name.trim_matches('`').to_owned(),
            kind: (*kind).to_owned(),
            labels: Some(backticked(labels)),
        });
    }
    metrics
}

fn backticked(cell: &str) -> BTreeSet<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, label)| label.to_owned())
        .collect()
}

/// The metrics of a Prometheus text exposition, from its `# TYPE` lines and samples.
pub fn exposed(text: &str) -> Vec<Metric> {
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                kinds.insert(name.to_owned(), kind.to_owned());
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, _) = line.split_once(' ').unwrap_or((line, ""));
        let (sample, label_text) = match series.split_once('{') {
            Some((sample, rest)) => (sample, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = family_of(sample, &kinds);
        let names = label_names(label_text);
        labels.entry(family).or_default().extend(names);
    }
    kinds
        .into_iter()
        .map(|(family, kind)| Metric {
            name: if kind == "counter" {
                format!("{family}_total")
            } else {
                family.clone()
            },
            labels: labels.get(&family).cloned(),
            kind,
        })
        .collect()
}

/// The family a sample belongs to: the sample name less the suffix its type adds.
fn family_of(sample: &str, kinds: &BTreeMap<String, String>) -> String {
    for suffix in ["_total", "_bucket", "_sum", "_count", "_created"] {
        if let Some(family) = sample.strip_suffix(suffix)
            && kinds.contains_key(family)
        {
            return family.to_owned();
        }
    }
    sample.to_owned()
}

fn label_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let name = name.trim_start_matches(',').trim();
        if name != "le" && !name.is_empty() {
            names.insert(name.to_owned());
        }
        // Skip the quoted value, escapes included.
        let mut escaped = false;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    names
}

/// Every difference between the catalogue and the exposition, one per line; empty when they
/// agree. Labels are compared where the exposition had samples to show them.
pub fn differences(catalogue: &[Metric], exposed: &[Metric]) -> String {
    let mut out = String::new();
    for metric in exposed {
        match catalogue.iter().find(|m| m.name == metric.name) {
            None => {
                let _ = writeln!(
                    out,
                    "exposed but not in the catalogue: | `{}` | {} | {} |",
                    metric.name,
                    metric.kind,
                    metric.labels.as_ref().map_or_else(
                        || "?".to_owned(),
                        |l| l
                            .iter()
                            .map(|l| format!("`{l}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                );
            }
            Some(listed) => {
                if listed.kind != metric.kind {
                    let _ = writeln!(
                        out,
                        "{}: the catalogue says {}, the exposition {}",
                        metric.name, listed.kind, metric.kind
                    );
                }
                if let (Some(listed_labels), Some(labels)) = (&listed.labels, &metric.labels)
                    && listed_labels != labels
                {
                    let _ = writeln!(
                        out,
                        "{}: the catalogue's labels are {listed_labels:?}, the exposition's {labels:?}",
                        metric.name
                    );
                }
            }
        }
    }
    for listed in catalogue {
        if !exposed.iter().any(|m| m.name == listed.name) {
            let _ = writeln!(out, "in the catalogue but not exposed: {}", listed.name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exposition_and_a_catalogue_are_read_alike() {
        let text = "# HELP a_requests Requests.\n# TYPE a_requests counter\n\
                    a_requests_total{route=\"/x\",status=\"200\"} 3\n\
                    # TYPE a_seconds histogram\na_seconds_bucket{kind=\"k\",le=\"0.1\"} 1\n\
                    a_seconds_sum{kind=\"k\"} 0.05\na_seconds_count{kind=\"k\"} 1\n\
                    # TYPE a_up gauge\na_up 1\n# TYPE a_empty counter\n";
        let doc = "# Metrics\n## API\n\n| metric | type | labels | meaning |\n|---|---|---|---|\n\
                   | `a_requests_total` | counter | `route`, `status` | Requests. |\n\
                   | `a_seconds` | histogram | `kind` | Time. |\n\
                   | `a_up` | gauge | - | Up. |\n| `a_empty_total` | counter | `x` | Empty. |\n\
                   ## Other\n| `b_total` | counter | - | Other. |\n";
        let exposition = exposed(text);
        let listed = catalogue(doc, "API");
        assert_eq!(listed.len(), 4);
        assert_eq!(differences(&listed, &exposition), "");
        let drifted = catalogue(&doc.replace("`route`, ", ""), "API");
        assert!(differences(&drifted, &exposition).contains("a_requests_total"));
        assert!(differences(&listed[1..], &exposition).contains("not in the catalogue"));
    }
}
