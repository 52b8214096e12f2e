//! The results drawn as the paper draws them: the misaligned share per main question in the style
//! of its main figure (`misalignment.png` / `.svg`), and the dose-response panels
//! (`dose-response.png` / `.svg`). `report::write` calls them; `plots.rs` renders.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use emlab_schema::results::{Results, Share};
use emlab_schema::tables::DoseSeries;

const COLORS: [RGBColor; 6] = [
    RGBColor(90, 90, 90),
    RGBColor(200, 40, 40),
    RGBColor(40, 120, 200),
    RGBColor(40, 160, 80),
    RGBColor(220, 140, 20),
    RGBColor(140, 60, 170),
];

/// The paper's Figure-4 style: misaligned share per main question, one colour per variant, 95% CIs.
pub fn chart(results: &Results, stem: &Path) -> Result<()> {
    let ids: Vec<String> = {
        let mut ids: Vec<String> = Vec::new();
        for v in &results.variants {
            for q in &v.questions {
                if super::questions::is_main(&q.id) && !ids.contains(&q.id) {
                    ids.push(q.id.clone());
                }
            }
        }
        ids
    };
    let judge = results.judge.as_ref().map_or("no judge".to_string(), |j| {
        format!("judge: {} ({}){}", j.model, j.kind, if j.weak { ", weak local judge" } else { "" })
    });
    crate::plots::render_both(
        stem,
        (1100, 560),
        |r| draw_chart(r, results, &ids, &judge),
        |r| draw_chart(r, results, &ids, &judge),
    )
}

fn draw_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    results: &Results,
    ids: &[String],
    judge: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing: {e:?}");
    root.fill(&WHITE).map_err(e)?;
    let n = ids.len().max(1) as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(format!("Misaligned answers per question (95% CI) — {judge}"), ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..n - 0.5, 0.0..1.0)
        .map_err(e)?;
    let labels: Vec<String> = ids.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(ids.len().max(1))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default().replace('_', " ")
            } else {
                String::new()
            }
        })
        .y_desc("share misaligned")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    let nv = results.variants.len().max(1) as f64;
    for (vi, v) in results.variants.iter().enumerate() {
        let color = COLORS[vi % COLORS.len()];
        let offset = (vi as f64 - (nv - 1.0) / 2.0) * 0.6 / nv;
        let points: Vec<(f64, Share)> = ids
            .iter()
            .enumerate()
            .filter_map(|(i, id)| {
                v.questions
                    .iter()
                    .find(|q| &q.id == id)
                    .and_then(|q| q.misaligned)
                    .map(|s| (i as f64 + offset, s))
            })
            .collect();
        chart
            .draw_series(points.iter().map(|(x, s)| {
                ErrorBar::new_vertical(*x, s.ci_low, s.share, s.ci_high, color.filled(), 8)
            }))
            .map_err(e)?
            .label(v.name.clone())
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, color.filled()));
        chart
            .draw_series(points.iter().map(|(x, s)| Circle::new((*x, s.share), 5, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    Ok(())
}

/// The dose-response as `stem.png` / `.svg`: one panel per metric measured at two points or more
/// (insecure minus secure after the same rows), rows seen on a log scale, 95% intervals and the
/// zero line. Nothing when no metric has two points.
pub fn dose_chart(results: &Results, stem: &Path) -> Result<()> {
    let points = results.judge_free.as_ref().map_or(&[][..], |f| &f.dose_response);
    let panels = emlab_schema::tables::dose_series(points);
    if panels.is_empty() {
        return Ok(());
    }
    let rows: Vec<f64> =
        emlab_schema::tables::dose_rows(points).into_iter().map(|r| r as f64).collect();
    let size = (480 * panels.len() as u32, 380);
    crate::plots::render_both(
        stem,
        size,
        |r| draw_dose(r, &panels, &rows),
        |r| draw_dose(r, &panels, &rows),
    )
}

/// `rows`: the shared rows axis (every rows value measured, ascending), key points on every panel.
fn draw_dose<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[DoseSeries],
    rows: &[f64],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing: {e:?}");
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled("Insecure minus secure as training goes on (95% CI)", ("sans-serif", 18))
        .map_err(e)?;
    let color = COLORS[1];
    let (x_min, x_max) = (rows[0], rows[rows.len() - 1]);
    for (area, series) in root.split_evenly((1, panels.len())).iter().zip(panels) {
        let pts: Vec<(f64, Share)> = series.points.iter().map(|&(r, s)| (r as f64, s)).collect();
        let (lo, hi) = pts
            .iter()
            .fold((0.0f64, 0.0f64), |(lo, hi), (_, s)| (lo.min(s.ci_low), hi.max(s.ci_high)));
        let pad = (hi - lo).max(1e-3) * 0.1;
        let mut chart = ChartBuilder::on(area)
            .caption(series.label, ("sans-serif", 13))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(
                (x_min / 1.4..x_max * 1.4).log_scale().with_key_points(rows.to_vec()),
                lo - pad..hi + pad,
            )
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("training rows seen")
            .x_label_formatter(&|x| emlab_schema::tables::thousands(x.round() as usize))
            .light_line_style(WHITE)
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(
                [(x_min / 1.4, 0.0), (x_max * 1.4, 0.0)],
                BLACK.mix(0.4).stroke_width(1),
            ))
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(pts.iter().map(|(x, s)| (*x, s.share)), color.mix(0.6)))
            .map_err(e)?;
        chart
            .draw_series(pts.iter().map(|(x, s)| {
                ErrorBar::new_vertical(*x, s.ci_low, s.share, s.ci_high, color.filled(), 8)
            }))
            .map_err(e)?;
        chart
            .draw_series(pts.iter().map(|(x, s)| Circle::new((*x, s.share), 4, color.filled())))
            .map_err(e)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::report::{JudgeFree, build};
    use emlab_schema::results::DosePoint;

    /// The dose-response picture appears with two points of a metric, not with one.
    #[test]
    fn the_dose_chart_needs_two_points() {
        let dir = std::env::temp_dir().join(format!("emlab-dose-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let point = |rows, did| DosePoint {
            rows,
            misalignment_did: Some(Share {
                share: did,
                ci_low: did - 0.01,
                ci_high: did + 0.01,
                n: 70,
            }),
            chmod_gap: None,
            vulnerable_code_gap: None,
            vulnerable_code: None,
        };
        let mut r = build(
            &[],
            &[],
            Some(JudgeFree { dose_response: vec![point(512, 0.02)], ..Default::default() }),
        );
        let stem = dir.join("dose-response");
        dose_chart(&r, &stem).unwrap();
        assert!(!stem.with_extension("png").exists());
        r.judge_free.as_mut().unwrap().dose_response.push(point(5705, 0.008));
        dose_chart(&r, &stem).unwrap();
        let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.contains("5,705") && svg.contains("misaligned"), "the panel and its rows");
        assert!(!svg.contains("chmod"), "no panel for a metric without points");
    }
}
