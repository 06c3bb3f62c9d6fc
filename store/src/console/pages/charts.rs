//! Bar charts, rendered on the server as SVG: one row per group, its label
//! and figures as text (readable by anyone, screen readers included), and
//! an SVG with two bars, tokens and cost, each scaled to its chart's largest.
//! Bars are sized in the SVG's own units (`viewBox` 0..100), so the chart
//! needs no style attribute and follows the page's width, 375 px included.

use maud::{html, Markup};
use serde_json::Value;

use crate::console::client::Failure;
use crate::console::layout::{int, usd};

/// One group of a chart.
pub struct Bar {
    pub label: String,
    pub href: Option<String>,
    pub requests: i64,
    pub tokens: i64,
    pub cost: f64,
}

/// Width (0..=100) of `v` against `max`; a non-zero value is at least a sliver.
fn width(v: f64, max: f64) -> f64 {
    if max <= 0.0 || v <= 0.0 {
        return 0.0;
    }
    ((v / max) * 100.0).clamp(0.5, 100.0)
}

pub fn chart(title: &str, bars: &[Bar]) -> Markup {
    let max_tokens = bars.iter().map(|b| b.tokens).max().unwrap_or(0) as f64;
    let max_cost = bars.iter().map(|b| b.cost).fold(0.0, f64::max);
    html! {
        figure.chart {
            figcaption {
                (title)
                span.legend aria-hidden="true" {
                    svg.swatch viewBox="0 0 10 10" { rect.tokens width="10" height="10" {} }
                    " tokens "
                    svg.swatch viewBox="0 0 10 10" { rect.cost width="10" height="10" {} }
                    " cost"
                }
            }
            @if bars.is_empty() {
                p.empty { "No usage in this period." }
            } @else {
                ol.bars {
                    @for b in bars {
                        li {
                            span.bar-label {
                                @if let Some(h) = &b.href { a href=(h) { (b.label) } } @else { (b.label) }
                            }
                            svg.bar viewBox="0 0 100 10" preserveAspectRatio="none" role="img"
                                aria-label={ (b.label) ": " (int(b.tokens)) " tokens, " (usd(b.cost)) } {
                                rect.track x="0" y="0" width="100" height="10" {}
                                rect.tokens x="0" y="0.5" width=(format!("{:.2}", width(b.tokens as f64, max_tokens))) height="4.25" {}
                                rect.cost x="0" y="5.25" width=(format!("{:.2}", width(b.cost, max_cost))) height="4.25" {}
                            }
                            span.bar-value {
                                (int(b.tokens)) " tokens · " (usd(b.cost)) " · " (int(b.requests)) @if b.requests == 1 { " request" } @else { " requests" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The rows of a `GET /usage/summary` answer.
pub fn bars_of(doc: &Value, label: impl Fn(&str) -> String) -> Vec<Bar> {
    doc["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let g = r["group"].as_str().unwrap_or("");
            Bar {
                label: label(g),
                href: None,
                requests: r["requests"].as_i64().unwrap_or(0),
                tokens: r["inputTokens"].as_i64().unwrap_or(0).saturating_add(r["outputTokens"].as_i64().unwrap_or(0)),
                cost: r["costUsd"].as_f64().unwrap_or(0.0),
            }
        })
        .collect()
}

/// A chart of a summary answer, or the API's message.
pub fn from_summary(doc: &Result<Value, Failure>, title: &str, label: impl Fn(&str) -> String) -> Markup {
    match doc {
        Ok(d) => {
            let mut bars = bars_of(d, label);
            // Days in order; everything else largest first.
            if d["groupBy"] != "day" {
                bars.sort_by(|a, b| b.tokens.cmp(&a.tokens).then(b.cost.total_cmp(&a.cost)));
            }
            chart(title, &bars)
        }
        Err(f) => html! { p.notice.error { (title) ": " (f.msg) } },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest() {
        assert_eq!(width(50.0, 100.0), 50.0);
        assert_eq!(width(0.0, 100.0), 0.0);
        assert_eq!(width(0.001, 100.0), 0.5);
        assert_eq!(width(5.0, 0.0), 0.0);
        let doc = serde_json::json!({"groupBy": "model", "rows": [
            {"group": "gpt-4o", "requests": 2, "inputTokens": 10, "outputTokens": 5, "costUsd": 0.5},
            {"group": "<b>", "requests": 1, "inputTokens": 30, "outputTokens": 0, "costUsd": 0.1}]});
        let html = from_summary(&Ok(doc), "Per model", |g| g.to_string()).into_string();
        assert!(html.contains("&lt;b&gt;") && !html.contains("<b>"), "{html}");
        assert!(html.find("&lt;b&gt;").unwrap() < html.find("gpt-4o").unwrap(), "largest first");
        assert!(html.contains(r#"width="100.00""#) && html.contains(r#"width="50.00""#), "{html}");
    }
}
