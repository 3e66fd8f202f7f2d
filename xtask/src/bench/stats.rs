//! Statistics shared by xtask and fw-bench (included by path in both).

/// The median (the mean of the two middle values for an even count); NaN
/// for none. Sorts `v`, so that its first and last values are the spread.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
