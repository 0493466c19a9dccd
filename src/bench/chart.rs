//! `bench.svg`: bytes held against build + update time, one point per `k` and one series per
//! (backend, cell type, size), drawn with plotters' SVG backend.

use std::path::Path;

use plotters::prelude::*;

use super::{BenchReport, Row};
use crate::error::{Error, Result};

/// One chart point: `k`, time in ms (x) and bytes (y).
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// `omitted_levels`.
    pub k: u32,
    /// Median build ms + median update ms at the largest touched fraction.
    pub ms: f64,
    /// Peak device bytes when the backend has a device, else tree node + raw bytes (host).
    pub bytes: u64,
}

/// The chart's series: for each (backend, cell, size), one point per `k` in sweep order.
/// x is the median build time plus the median update time of the largest touched
/// fraction; y is the device peak on a device backend, else node + raw bytes.
pub fn series(report: &BenchReport) -> Vec<(String, Vec<Point>)> {
    let top = report
        .config
        .touched
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let mut out: Vec<(String, Vec<Point>)> = Vec::new();
    for row in report.rows.iter().filter(|r| r.touched_fraction == top) {
        let name = label(row);
        let point = Point {
            k: row.k,
            ms: row.build.median_ms + row.update.median_ms,
            bytes: if row.peak_device_bytes > 0 {
                row.peak_device_bytes
            } else {
                row.node_bytes + row.raw_bytes
            },
        };
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, points)) => points.push(point),
            None => out.push((name, vec![point])),
        }
    }
    out
}

fn label(row: &Row) -> String {
    format!(
        "{} {} 2^{} B",
        row.backend.name(),
        row.cell.name(),
        row.bytes.trailing_zeros()
    )
}

/// Writes the chart to `path` (log–log axes).
///
/// # Errors
/// [`Error::Io`] naming the path when plotters cannot draw or write it.
pub fn write_svg(report: &BenchReport, path: &Path) -> Result<()> {
    draw(report, path).map_err(|e| {
        Error::io(
            format!("drawing {}", path.display()),
            std::io::Error::other(e.to_string()),
        )
    })
}

fn draw(report: &BenchReport, path: &Path) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let all = series(report);
    let points = all.iter().flat_map(|(_, p)| p);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in points {
        x0 = x0.min(p.ms.max(1e-3));
        x1 = x1.max(p.ms.max(1e-3));
        y0 = y0.min(p.bytes.max(1) as f64);
        y1 = y1.max(p.bytes.max(1) as f64);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (1.0, 10.0, 1.0, 10.0);
    }
    let root = SVGBackend::new(path, (1100, 750)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = match &report.device {
        Some(d) => format!("memcommit bench: device bytes vs build + update time ({d})"),
        None => "memcommit bench: host bytes vs build + update time".to_string(),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(
            // Base 2: grid lines at powers of two (ms; whole KiB / MiB / GiB), which
            // plotters labels evenly at any range, unlike base 10's decade subdivisions.
            (x0 / 1.5..x1 * 1.5).log_scale().base(2.0),
            (y0 / 1.5..y1 * 1.5).log_scale().base(2.0),
        )?;
    // Only the labelled grid lines: log axes' minor lines crowd the points.
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("median build ms + median update ms (largest touched fraction)")
        .y_desc("bytes (tree nodes + raw memory; device peak on a GPU)")
        .y_label_formatter(&|b| human_bytes(*b))
        .draw()?;
    for (i, (name, points)) in all.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let xy: Vec<(f64, f64)> = points.iter().map(|p| (p.ms, p.bytes as f64)).collect();
        chart
            .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(xy.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        chart.draw_series(
            point_labels(points)
                .into_iter()
                .map(|(text, at)| Text::new(text, at, ("sans-serif", 12))),
        )?;
    }
    // Lower right: larger k (fewer bytes) sits low, slower sizes sit right, so that
    // corner is the emptiest.
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One label per run of consecutive points that would print on top of each other (same
/// bytes, times within 15 %), e.g. `k=0,1,3` for a backend whose bytes do not depend on k.
fn point_labels(points: &[Point]) -> Vec<(String, (f64, f64))> {
    let mut out: Vec<(Vec<u32>, &Point)> = Vec::new();
    for p in points {
        match out.last_mut() {
            Some((ks, first)) if first.bytes == p.bytes && (p.ms / first.ms - 1.0).abs() < 0.15 => {
                ks.push(p.k)
            }
            _ => out.push((vec![p.k], p)),
        }
    }
    out.into_iter()
        .map(|(ks, p)| {
            let ks: Vec<String> = ks.iter().map(u32::to_string).collect();
            (format!("k={}", ks.join(",")), (p.ms, p.bytes as f64))
        })
        .collect()
}

/// Bytes as B, KiB, MiB or GiB with one decimal.
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coinciding_points_share_one_label() {
        let p = |k, ms, bytes| Point { k, ms, bytes };
        let labels = point_labels(&[
            p(0, 100.0, 64),
            p(1, 102.0, 64),
            p(3, 120.0, 64),
            p(5, 121.0, 32),
        ]);
        let texts: Vec<&str> = labels.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(texts, ["k=0,1", "k=3", "k=5"]);
        assert_eq!(labels[0].1, (100.0, 64.0));
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(3.0 * (1u64 << 30) as f64), "3.0 GiB");
    }
}
