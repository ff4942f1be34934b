//! Small pure helpers: percentiles of a sample and the RSS summary.

use serde::Serialize;

/// The `q`-quantile (0..=1) of an ascending sample, nearest-rank: the
/// smallest value with at least `q` of the sample at or below it.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Spread of a sample of durations (seconds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub max: f64,
}

impl Summary {
    /// Sorts `v` in place; `None` for an empty sample.
    pub fn of(v: &mut [f64]) -> Option<Summary> {
        v.sort_by(f64::total_cmp);
        Some(Summary {
            n: v.len(),
            min: *v.first()?,
            p50: percentile(v, 0.5)?,
            max: *v.last()?,
        })
    }
}

/// The node's resident memory over a run, KiB.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RssSummary {
    /// Mean over the baseline phase.
    pub before_kib: u64,
    /// Highest sample from the attack's start to the end.
    pub peak_kib: u64,
    /// The last sample of the after phase.
    pub after_kib: u64,
    pub samples: usize,
}

/// Phase of a sample, as [`RssSummary::of`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Baseline,
    Attack,
    After,
}

impl RssSummary {
    /// From `(phase, KiB)` samples in time order; `None` without a baseline
    /// sample or any later one.
    pub fn of(samples: &[(When, u64)]) -> Option<RssSummary> {
        let base: Vec<u64> = samples
            .iter()
            .filter(|(w, _)| *w == When::Baseline)
            .map(|(_, k)| *k)
            .collect();
        if base.is_empty() {
            return None;
        }
        let mut later = samples.iter().filter(|(w, _)| *w != When::Baseline);
        Some(RssSummary {
            before_kib: base.iter().sum::<u64>() / base.len() as u64,
            peak_kib: later.clone().map(|(_, k)| *k).max()?,
            after_kib: later.next_back()?.1,
            samples: samples.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
        let mut w = vec![3.0, 1.0, 2.0];
        let s = Summary::of(&mut w).unwrap();
        assert_eq!((s.n, s.min, s.p50, s.max), (3, 1.0, 2.0, 3.0));
        assert!(Summary::of(&mut []).is_none());
    }

    #[test]
    fn rss_before_peak_after() {
        use When::*;
        let s = [
            (Baseline, 100),
            (Baseline, 120),
            (Attack, 400),
            (Attack, 380),
            (After, 300),
            (After, 130),
        ];
        let r = RssSummary::of(&s).unwrap();
        assert_eq!((r.before_kib, r.peak_kib, r.after_kib), (110, 400, 130));
        assert!(RssSummary::of(&s[2..]).is_none());
        assert!(RssSummary::of(&s[..2]).is_none());
    }
}
