//! Order statistics over samples, in milliseconds.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub runs: usize,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Some(Summary {
        runs: s.len(),
        min: s[0],
        p50: percentile(&s, 50.0),
        p95: percentile(&s, 95.0),
        p99: percentile(&s, 99.0),
        max: s[s.len() - 1],
    })
}

/// Median of per-round ratios `a[i] / b[i]`: robust against drift during the run, because both
/// samples of a round ran back to back.
pub fn median_ratio(a: &[f64], b: &[f64]) -> Option<f64> {
    let r: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, y)| **y > 0.0)
        .map(|(x, y)| x / y)
        .collect();
    summarize(&r).map(|s| s.p50)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&v).unwrap();
        assert_eq!(
            (s.min, s.p50, s.p95, s.p99, s.max),
            (1.0, 50.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(summarize(&[3.0]).unwrap().p99, 3.0);
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn ratios_pair_rounds() {
        assert_eq!(median_ratio(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]), Some(0.5));
    }
}
