//! `curves.png`: the training loss and its parts, and train and validation Dice, one point per
//! epoch. `train` writes it beside its checkpoints; the demo's page shows it.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::write_png;
use crate::Error;
use crate::train::EpochMetrics;

/// Size of `curves.png`: two panels side by side.
pub(crate) const CURVES_W: u32 = 1200;
pub(crate) const CURVES_H: u32 = 440;

/// Name under which the embedded font is registered with plotters.
const FONT: &str = "reclmis-sans";
/// DejaVu Sans cut down to ASCII (10 KB); licence in `assets/DejaVu-LICENSE`.
static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");

/// Writes the training curves of `history` as a PNG: the training loss and its four parts on the
/// left, train and validation Dice on the right, one point per epoch.
pub fn write_curves(path: &Path, history: &[EpochMetrics]) -> Result<(), Error> {
    let rgb = render_curves(history).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("drawing the curves failed: {e}")),
    })?;
    write_png(path, CURVES_W as usize, CURVES_H as usize, 3, &rgb)
}

/// Registers the embedded font with plotters' global font table (once per process).
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let ok = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok();
        assert!(
            ok,
            "the embedded DejaVu Sans subset is a valid TrueType font"
        );
    });
}

/// One line of a panel: label, colour and the value of each epoch.
struct Curve {
    label: &'static str,
    colour: RGBColor,
    value: fn(&EpochMetrics) -> f64,
}

const LOSS_CURVES: [Curve; 5] = [
    Curve {
        label: "total",
        colour: RGBColor(20, 20, 20),
        value: |m| m.train_loss,
    },
    Curve {
        label: "criterion (Dice + BCE)",
        colour: RGBColor(214, 39, 40),
        value: |m| m.train_criterion,
    },
    Curve {
        label: "CCL",
        colour: RGBColor(31, 119, 180),
        value: |m| if m.aux { m.train_ccl } else { f64::NAN },
    },
    Curve {
        label: "text reconstruction",
        colour: RGBColor(44, 160, 44),
        value: |m| if m.aux { m.train_text_rec } else { f64::NAN },
    },
    Curve {
        label: "image reconstruction",
        colour: RGBColor(148, 103, 189),
        value: |m| if m.aux { m.train_img_rec } else { f64::NAN },
    },
];

const DICE_CURVES: [Curve; 2] = [
    Curve {
        label: "train Dice",
        colour: RGBColor(31, 119, 180),
        value: |m| m.train_dice,
    },
    Curve {
        label: "validation Dice",
        colour: RGBColor(255, 127, 14),
        value: |m| m.val_dice,
    },
];

type PlotError = Box<dyn std::error::Error>;

/// RGB pixels of the curves (`CURVES_W × CURVES_H`).
fn render_curves(history: &[EpochMetrics]) -> Result<Vec<u8>, PlotError> {
    register_font();
    let mut buf = vec![0u8; (CURVES_W * CURVES_H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (CURVES_W, CURVES_H)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 2));
        let loss_max = LOSS_CURVES
            .iter()
            .flat_map(|c| history.iter().map(c.value))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        draw_panel(
            &panels[0],
            history,
            "Training loss",
            "loss",
            // Headroom so the first epoch's total is not drawn on the frame.
            (0.0, nice_ceiling(1.05 * loss_max)),
            &LOSS_CURVES,
            SeriesLabelPosition::UpperRight,
        )?;
        draw_panel(
            &panels[1],
            history,
            "Dice per epoch",
            "Dice",
            (0.0, 1.0),
            &DICE_CURVES,
            SeriesLabelPosition::LowerRight,
        )?;
        root.present()?;
    }
    Ok(buf)
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    history: &[EpochMetrics],
    title: &str,
    y_desc: &str,
    (y0, y1): (f64, f64),
    curves: &[Curve],
    legend: SeriesLabelPosition,
) -> Result<(), PlotError> {
    let epochs = history.iter().map(|m| m.epoch).max().unwrap_or(1).max(1);
    // Whole epochs on the x axis, half an epoch of margin either side so a single epoch's point is
    // not on the frame.
    let x_range = 0.5..epochs as f64 + 0.5;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x_range, y0..y1)?;
    let decimals = if y1 - y0 >= 5.0 {
        0
    } else if y1 - y0 >= 0.5 {
        1
    } else {
        2
    };
    chart
        .configure_mesh()
        .x_labels(epochs.min(10) + 2)
        .x_label_formatter(&|x| {
            let e = x.round();
            // Plotters puts ticks on round numbers, halves included; only whole epochs get a label.
            let whole = (x - e).abs() < 1e-6 && e >= 1.0;
            if whole {
                format!("{e:.0}")
            } else {
                String::new()
            }
        })
        .y_labels(6)
        .y_label_formatter(&|y| format!("{y:.decimals$}"))
        .x_desc("epoch")
        .y_desc(y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    for c in curves {
        let points: Vec<(f64, f64)> = history
            .iter()
            .map(|m| (m.epoch as f64, (c.value)(m)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        let colour = c.colour;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(c.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        // Dots mark the epochs while they are few enough to tell apart.
        if points.len() <= 20 {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(legend)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .margin(10)
        .draw()?;
    Ok(())
}

/// The smallest round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × a power of ten) at or above
/// `v` (1 when `v` is not positive), so the loss axis ends on a round number close to the data.
fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_draw_every_epoch_and_survive_an_empty_history() {
        let m = |epoch: usize, loss: f64, dice: f64| EpochMetrics {
            epoch,
            lr: 1e-3,
            train_loss: loss,
            train_criterion: 0.6 * loss,
            train_ccl: 0.3 * loss,
            train_text_rec: 0.05 * loss,
            train_img_rec: 0.05 * loss,
            train_dice: dice,
            val_loss: loss,
            val_dice: dice * 0.9,
            seconds: 1.0,
            best: true,
            aux: true,
        };
        let history: Vec<EpochMetrics> = (1..=6)
            .map(|e| m(e, 2.0 / e as f64, 0.1 * e as f64))
            .collect();
        let rgb = render_curves(&history).unwrap();
        assert_eq!(rgb.len(), (CURVES_W * CURVES_H * 3) as usize);
        // The total loss is drawn in near-black, the validation Dice in orange: both present.
        let has = |c: [u8; 3]| rgb.chunks_exact(3).any(|p| p == c);
        assert!(has([20, 20, 20]));
        assert!(has([255, 127, 14]));
        // Text was drawn (the embedded font works): dark anti-aliased grey pixels in the top
        // caption band of the left panel.
        let caption_dark = (0..40)
            .flat_map(|y| (0..CURVES_W / 2).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let i = 3 * (y * CURVES_W + x) as usize;
                rgb[i] < 128
            })
            .count();
        assert!(caption_dark > 50, "{caption_dark}");
        assert_eq!(render_curves(&[]).unwrap().len(), rgb.len());
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(1.7), 2.0);
        assert_eq!(nice_ceiling(2.2), 2.5);
        assert_eq!(nice_ceiling(0.031), 0.04);
        assert_eq!(nice_ceiling(7.2), 8.0);
        assert_eq!(nice_ceiling(5.0), 5.0);
    }
}
