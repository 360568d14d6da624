//! The multivariate part of a class baseline: a Gaussian mixture (linfa)
//! over log1p-scaled features. linfa fits it; scoring (the log-likelihood
//! of one window) is computed here from the fitted weights, means and
//! precision matrices, since linfa only exposes responsibilities.

use linfa::{DatasetBase, traits::Fit};
use linfa_clustering::GaussianMixtureModel;
use ndarray::Array2;

use super::features::N;

/// Regularisation added to every covariance diagonal, in log1p units: a
/// feature that was constant during training (say, zero storage writes)
/// would otherwise make any other value infinitely unlikely.
const REG_COVAR: f64 = 0.05;

/// One fitted component, ready to score.
#[derive(Debug, Clone)]
struct Component {
    mean: [f64; N],
    /// Precision matrix, row-major.
    precision: Vec<f64>,
    /// log weight - N/2 ln 2pi + 1/2 ln det(precision).
    log_norm: f64,
}

#[derive(Debug, Clone)]
pub struct Gmm {
    components: Vec<Component>,
    /// Windows below this log-likelihood are unlike the class.
    pub threshold: f64,
    /// Windows it was fitted on.
    pub trained_on: usize,
}

/// Cholesky factor of a symmetric positive definite matrix (row-major);
/// None when it is not positive definite.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

impl Gmm {
    /// Fits up to `components` components (fewer if the data cannot
    /// support them) and sets the threshold at the `quantile` of the
    /// training log-likelihoods minus `margin`.
    pub fn fit(
        data: &[[f32; N]],
        components: usize,
        quantile: f64,
        margin: f64,
    ) -> Result<Gmm, String> {
        if data.len() < 8 {
            return Err(format!("{} windows are too few to fit", data.len()));
        }
        let flat: Vec<f64> = data.iter().flatten().map(|x| *x as f64).collect();
        let records = Array2::from_shape_vec((data.len(), N), flat).map_err(|e| e.to_string())?;
        let dataset = DatasetBase::from(records);
        let mut last_err = String::new();
        for k in (1..=components.min(data.len() / 8).max(1)).rev() {
            let fitted = GaussianMixtureModel::params(k)
                .reg_covariance(REG_COVAR)
                .max_n_iterations(200)
                .tolerance(1e-3)
                .fit(&dataset);
            match fitted {
                Ok(m) => match Self::from_model(&m, data.len()) {
                    Some(mut g) => {
                        let mut scores: Vec<f64> = data.iter().map(|x| g.loglik(x)).collect();
                        scores.sort_by(f64::total_cmp);
                        let i = ((scores.len() as f64 * quantile) as usize).min(scores.len() - 1);
                        g.threshold = scores[i] - margin;
                        return Ok(g);
                    }
                    None => last_err = "a fitted covariance is not positive definite".into(),
                },
                Err(e) => last_err = e.to_string(),
            }
        }
        Err(last_err)
    }

    fn from_model(m: &GaussianMixtureModel<f64>, trained_on: usize) -> Option<Gmm> {
        let half_log_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
        let mut components = Vec::new();
        for k in 0..m.weights().len() {
            let w = m.weights()[k];
            if w <= 0.0 {
                continue;
            }
            let mut mean = [0.0; N];
            for (d, x) in mean.iter_mut().enumerate() {
                *x = m.means()[[k, d]];
            }
            let mut precision = vec![0.0; N * N];
            for i in 0..N {
                for j in 0..N {
                    precision[i * N + j] = m.precisions()[[k, i, j]];
                }
            }
            let l = cholesky(&precision, N)?;
            let log_det: f64 = (0..N).map(|i| l[i * N + i].ln()).sum::<f64>() * 2.0;
            components.push(Component {
                mean,
                precision,
                log_norm: w.ln() - N as f64 * half_log_2pi + 0.5 * log_det,
            });
        }
        (!components.is_empty()).then_some(Gmm {
            components,
            threshold: f64::NEG_INFINITY,
            trained_on,
        })
    }

    /// Log-likelihood of one log1p-scaled window under the mixture.
    pub fn loglik(&self, x: &[f32; N]) -> f64 {
        let mut terms = Vec::with_capacity(self.components.len());
        for c in &self.components {
            let mut diff = [0.0; N];
            for (d, v) in diff.iter_mut().enumerate() {
                *v = x[d] as f64 - c.mean[d];
            }
            let mut q = 0.0;
            for i in 0..N {
                let mut row = 0.0;
                for (j, dj) in diff.iter().enumerate() {
                    row += c.precision[i * N + j] * dj;
                }
                q += diff[i] * row;
            }
            terms.push(c.log_norm - 0.5 * q);
        }
        let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlier_scores_below_threshold() {
        // Two clusters in a few dimensions, deterministic jitter.
        let mut data = Vec::new();
        for i in 0..400u32 {
            let j = ((i * 7919) % 100) as f32 / 100.0;
            let mut x = [0f32; N];
            x[0] = if i % 2 == 0 { 5.0 } else { 9.0 } + j * 0.5;
            x[1] = 3.0 + j * 0.3;
            x[11] = 0.5 + j * 0.1;
            data.push(x);
        }
        let g = Gmm::fit(&data, 3, 0.001, 5.0).unwrap();
        assert!(data.iter().all(|x| g.loglik(x) >= g.threshold));
        let mut out = data[0];
        out[0] = 16.0;
        out[8] = 6.0;
        assert!(
            g.loglik(&out) < g.threshold,
            "{} vs {}",
            g.loglik(&out),
            g.threshold
        );
    }
}
