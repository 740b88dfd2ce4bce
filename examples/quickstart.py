"""moekit quickstart: a mixture of regressions on the tone-perception data.

Cohen's (1980) musicians tuned a tone to a stretched harmonic series; some
follow the stretch ratio, others stay at the octave (tuned = 2).  One
regression line averages the two groups; a two-expert mixture finds both and
says, for every x, how much each is trusted.

Run:  python examples/quickstart.py
"""

import numpy as np

from moekit import MoERegressor
from moekit.datasets import load_tonedata

d = load_tonedata()
X, y = d.data, d.target

print("Choosing the number of experts by BIC (lower is better):")
for k in (1, 2, 3):
    est = MoERegressor(n_experts=k, random_state=0).fit(X, y)
    print(f"  K={k}: log-likelihood {est.score_samples(X, y).sum():9.3f}   BIC {est.bic(X, y):9.3f}")

moe = MoERegressor(n_experts=2, random_state=0).fit(X, y)
print(f"\nEM converged in {moe.n_iter_} iterations; total log-likelihood "
      f"{moe.log_likelihood_:.3f} (the highest known maximum, 145.650; the literature's two-line fit, "
      "142.848, is what a single random start, init='random', finds)")
coef = moe.model_.experts.coef.detach().numpy()[:, :, 0]
sd = np.sqrt(moe.model_.experts.covariance_matrix().detach().numpy()[:, 0, 0])
for k in range(2):
    print(f"  expert {k}: tuned = {coef[k, 0]:6.3f} + {coef[k, 1]:6.3f} * stretchratio   (noise sd {sd[k]:.4f})")

grid = np.array([[1.5], [2.0], [2.5], [3.0]])
gate = moe.predict_gate(grid)
quant = moe.predict_quantiles(grid, [0.05, 0.5, 0.95])
print("\n stretch   gate weights      mean   5%    50%    95%")
for x, g, m, q in zip(grid[:, 0], gate, moe.predict(grid), quant):
    print(f"  {x:4.1f}    [{g[0]:.2f}, {g[1]:.2f}]    {m:5.2f}  {q[0]:5.2f}  {q[1]:5.2f}  {q[2]:5.2f}")
print("\nThe mean sits between the branches; the quantiles show the two-branch spread.")
