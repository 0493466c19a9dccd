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
            (x0 / 1.5..x1 * 1.5).log_scale(),
            (y0 / 1.5..y1 * 1.5).log_scale(),
        )?;
    chart
        .configure_mesh()
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
        chart.draw_series(points.iter().map(|p| {
            Text::new(
                format!("k={}", p.k),
                (p.ms, p.bytes as f64),
                ("sans-serif", 12),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
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
    fn human_bytes_units() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(3.0 * (1u64 << 30) as f64), "3.0 GiB");
    }
}
