//! Order statistics over samples (milliseconds unless said otherwise).

use serde::{Deserialize, Serialize};

/// Distribution of one metric. Percentiles are nearest-rank, so every figure is a measured sample.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub runs: usize,
    pub min: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
    /// Coefficient of variation (standard deviation / mean): how noisy the samples were.
    pub cv: f64,
}

/// Nearest-rank percentile of sorted, non-empty samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len() as f64;
    let mean = s.iter().sum::<f64>() / n;
    let var = s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    Some(Summary {
        runs: s.len(),
        min: s[0],
        p25: percentile(&s, 25.0),
        p50: percentile(&s, 50.0),
        p75: percentile(&s, 75.0),
        p95: percentile(&s, 95.0),
        p99: percentile(&s, 99.0),
        max: s[s.len() - 1],
        mean,
        cv: if mean > 0.0 { var.sqrt() / mean } else { 0.0 },
    })
}

/// Per-round ratios `a[i] / b[i]` (rounds where either side failed are `NaN` and left out).
pub fn round_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.is_finite() && y.is_finite() && **y > 0.0)
        .map(|(x, y)| x / y)
        .collect()
}

/// A ratio to a peer: the median of per-round ratios (robust against drift during the run,
/// because both samples of a round ran back to back) and their spread (p25..p75).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ratio {
    pub to: String,
    pub p50: f64,
    pub p25: f64,
    pub p75: f64,
}

pub fn ratio(to: &str, a: &[f64], b: &[f64]) -> Option<Ratio> {
    let s = summarize(&round_ratios(a, b))?;
    Some(Ratio {
        to: to.to_string(),
        p50: s.p50,
        p25: s.p25,
        p75: s.p75,
    })
}

/// Per round, the smallest sample among `peers` (`NaN` when none has one).
pub fn fastest_per_round(peers: &[&[f64]]) -> Vec<f64> {
    let rounds = peers.iter().map(|p| p.len()).max().unwrap_or(0);
    (0..rounds)
        .map(|i| {
            peers
                .iter()
                .filter_map(|p| p.get(i).copied())
                .filter(|x| x.is_finite())
                .fold(f64::NAN, f64::min)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&v).unwrap();
        assert_eq!(
            (s.min, s.p25, s.p50, s.p75, s.p95, s.p99, s.max),
            (1.0, 25.0, 50.0, 75.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(s.mean, 50.5);
        assert_eq!(summarize(&[3.0]).unwrap().p99, 3.0);
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn coefficient_of_variation() {
        assert_eq!(summarize(&[5.0, 5.0, 5.0]).unwrap().cv, 0.0);
        let s = summarize(&[1.0, 3.0]).unwrap();
        assert!((s.cv - 0.5).abs() < 1e-12, "{}", s.cv);
    }

    #[test]
    fn ratios_pair_rounds_and_skip_failed_ones() {
        let r = ratio("b", &[1.0, 2.0, 3.0, f64::NAN], &[2.0, 4.0, 6.0, 1.0]).unwrap();
        assert_eq!((r.p25, r.p50, r.p75), (0.5, 0.5, 0.5));
        assert_eq!(r.to, "b");
        assert!(ratio("b", &[f64::NAN], &[1.0]).is_none());
    }

    #[test]
    fn fastest_peer_is_taken_per_round() {
        let a = [3.0, 1.0, f64::NAN];
        let b = [2.0, 5.0, 4.0];
        assert_eq!(fastest_per_round(&[&a, &b]), vec![2.0, 1.0, 4.0]);
    }
}
