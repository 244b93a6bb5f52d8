//! Charts drawn on the server as SVG: no chart library, nothing to download.

use maud::{Markup, html};

const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 140.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 18.0;

/// One bar: its label, the lower (main) value and an upper value stacked on it (errors, say).
pub struct Bar {
    /// Axis label and tooltip title.
    pub label: String,
    /// Main value.
    pub value: f64,
    /// Stacked on top (0 for none).
    pub stacked: f64,
}

/// A vertical bar chart. `fmt` formats values for the tooltips and the maximum label.
pub fn bars(
    id: &str,
    caption: &str,
    bars: &[Bar],
    legend: Option<(&str, &str)>,
    fmt: &dyn Fn(f64) -> String,
) -> Markup {
    let max = bars.iter().map(|b| b.value + b.stacked).fold(0.0, f64::max);
    let plot = HEIGHT - TOP - BOTTOM;
    let slot = WIDTH / bars.len().max(1) as f64;
    let width = (slot * 0.72).max(1.0);
    let scale = |v: f64| if max > 0.0 { v / max * plot } else { 0.0 };
    let total: f64 = bars.iter().map(|b| b.value + b.stacked).sum();
    let label = format!(
        "{caption}: {} in all, at most {} per bar",
        fmt(total),
        fmt(max)
    );
    html! {
        figure.chart id=(id) {
            figcaption { (caption) }
            svg viewBox={"0 0 " (WIDTH) " " (HEIGHT)} role="img" aria-label=(label) preserveAspectRatio="none" {
                line.axis x1="0" y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) {}
                text.tick x="2" y="10" { (fmt(max)) }
                @for (i, bar) in bars.iter().enumerate() {
                    @let x = i as f64 * slot + (slot - width) / 2.0;
                    @let low = scale(bar.value);
                    @let high = scale(bar.stacked);
                    g {
                        title { (bar.label) ": " (fmt(bar.value)) @if bar.stacked > 0.0 { " + " (fmt(bar.stacked)) } }
                        rect.bar x=(x) y=(HEIGHT - BOTTOM - low) width=(width) height=(low) {}
                        @if high > 0.0 {
                            rect.bar-alt x=(x) y=(HEIGHT - BOTTOM - low - high) width=(width) height=(high) {}
                        }
                        // A transparent full-height target, so the tooltip is reachable on small bars.
                        rect.hit x=(i as f64 * slot) y="0" width=(slot) height=(HEIGHT - BOTTOM) {}
                    }
                }
                @if let (Some(first), Some(last)) = (bars.first(), bars.last()) {
                    text.tick x="2" y=(HEIGHT - 4.0) { (first.label) }
                    text.tick x=(WIDTH - 2.0) y=(HEIGHT - 4.0) text-anchor="end" { (last.label) }
                }
            }
            @if let Some((main, alt)) = legend {
                p.legend { span.swatch {} (main) " " span.swatch.alt {} (alt) }
            }
        }
    }
}

/// A horizontal share bar (0–1) for tables.
pub fn share(fraction: f64, label: &str) -> Markup {
    let percent = (fraction.clamp(0.0, 1.0) * 100.0).round();
    html! {
        svg.share viewBox="0 0 100 8" role="img" aria-label={(label) ": " (percent) "%"} preserveAspectRatio="none" {
            rect.track x="0" y="0" width="100" height="8" rx="2" {}
            rect.bar x="0" y="0" width=(percent) height="8" rx="2" {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_tallest_and_escape_labels() {
        let data = [
            Bar {
                label: "a<b".into(),
                value: 10.0,
                stacked: 0.0,
            },
            Bar {
                label: "c".into(),
                value: 5.0,
                stacked: 5.0,
            },
        ];
        let svg = bars("x", "Requests", &data, None, &|v| format!("{v:.0}")).into_string();
        assert!(svg.contains("a&lt;b"), "{svg}");
        assert_eq!(svg.matches("class=\"bar\"").count(), 2);
        assert_eq!(svg.matches("class=\"bar-alt\"").count(), 1);
        assert!(
            svg.contains("height=\"108\""),
            "the tallest bars fill the plot: {svg}"
        );
        assert!(svg.contains("aria-label=\"Requests: 20 in all, at most 10 per bar\""));
        let empty = bars("y", "Nothing", &[], None, &|v| format!("{v}")).into_string();
        assert!(empty.contains("<svg"));
    }
}
