//! Charts as PNG and SVG (plotters). Text is drawn with the embedded DejaVu Sans, so a machine
//! without system fonts renders the same pictures.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::training::StepStats;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and known to parse: a failure here is a build defect.
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("embedded font is invalid"));
    });
}

/// The training loss per step, with a moving average, as `stem.png` / `stem.svg`.
pub fn loss_curve(stem: &Path, title: &str, steps: &[StepStats]) -> Result<()> {
    if steps.is_empty() {
        return Ok(());
    }
    let points: Vec<(f64, f64)> = steps.iter().map(|s| (s.step as f64, s.loss)).collect();
    let window = (steps.len() / 20).max(1);
    let smooth: Vec<(f64, f64)> = (0..points.len())
        .map(|i| {
            let lo = i.saturating_sub(window - 1);
            let mean = points[lo..=i].iter().map(|p| p.1).sum::<f64>() / (i - lo + 1) as f64;
            (points[i].0, mean)
        })
        .collect();
    let x_max = points.last().map_or(1.0, |p| p.0).max(2.0);
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.05;
    render_both(
        stem,
        (900, 500),
        |root| draw_loss(root, title, &points, &smooth, x_max, y_max),
        |root| draw_loss(root, title, &points, &smooth, x_max, y_max),
    )
}

fn draw_loss<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    points: &[(f64, f64)],
    smooth: &[(f64, f64)],
    x_max: f64,
    y_max: f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing: {e:?}");
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(1.0..x_max, 0.0..y_max.max(1e-3))
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc("loss (assistant tokens, nats)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            RGBColor(150, 180, 220).stroke_width(1),
        ))
        .map_err(e)?
        .label("per step")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RGBColor(150, 180, 220)));
    chart
        .draw_series(LineSeries::new(smooth.iter().copied(), RGBColor(20, 70, 160).stroke_width(2)))
        .map_err(e)?
        .label("moving average")
        .legend(|(x, y)| {
            PathElement::new(vec![(x, y), (x + 18, y)], RGBColor(20, 70, 160).stroke_width(2))
        });
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    Ok(())
}

/// Draws the same chart into `stem.png` and `stem.svg` (one closure per backend type).
pub fn render_both(
    stem: &Path,
    size: (u32, u32),
    png: impl Fn(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
    svg: impl Fn(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    register_font();
    // Both drawn aside and moved into place whole, so a reader never sees half a picture. The
    // bitmap backend picks the format from the extension, hence `.partial.png`.
    let png_path = stem.with_extension("png");
    let partial = stem.with_extension("partial.png");
    {
        let root = BitMapBackend::new(&partial, size).into_drawing_area();
        png(&root)?;
        root.present().map_err(|e| anyhow!("{}: {e}", png_path.display()))?;
    }
    emlab_model::files::durable_rename(&partial, &png_path)?;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
        svg(&root)?;
        root.present().map_err(|e| anyhow!("{}: {e}", stem.display()))?;
    }
    emlab_model::files::atomic_write(&stem.with_extension("svg"), text.as_bytes())?;
    Ok(())
}
