# Time flexmix's EM for a softmax-gated mixture of linear-Gaussian experts.
#
# The R side of benchmarks/flexmix_compare.py (which writes the inputs, runs
# this script single-threaded and parses its output); it can also be run alone:
#
#   Rscript benchmarks/flexmix_em.R DATA.csv LABELS.csv K ITERS [REPEATS]
#
# DATA.csv:   header x1,...,xD,y; one row per sample.
# LABELS.csv: header label; the initial hard cluster of every row, 1..K.
#
# Model: flexmix(y ~ ., k = K, cluster = labels,
#                model = FLXMRglm(family = "gaussian"),
#                concomitant = FLXPmultinom(~ x1 + ... + xD)),
# control: iter.max = ITERS, minprior = 0 (no component is ever removed),
# tolerance = -1 (flexmix stops when |dllh| / (|llh| + 0.1) < tolerance, which
# a negative tolerance never satisfies: exactly ITERS iterations), verbose = 0.
#
# One flexmix iteration is an M-step (the gate: nnet's multinomial logit fitted
# from zero weights, BFGS to convergence; the experts: weighted least squares)
# followed by an E-step; the start (cluster = labels) is the posterior itself,
# so ITERS iterations are ITERS M-steps.
#
# For every repeat the script times a 1-iteration fit and an ITERS-iteration
# fit (elapsed wall time of proc.time); the per-iteration time is
# (t(ITERS) - t(1)) / (ITERS - 1), which removes the setup (model frames,
# the first M-step's allocations, the fitted object).  One untimed 1-iteration
# fit comes first, as a warm-up.
#
# Output: key=value lines,
#   info R="..." flexmix=... nnet=... blas=... n=... d=... k=... iters=... repeats=...
#   fit repeat=R requested=I seconds=S cpu=C iter=J loglik=L
# (cpu: user + system seconds of this process, to check that it ran on one core).

suppressPackageStartupMessages(library(flexmix))

args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 4) {
  stop("usage: Rscript flexmix_em.R DATA.csv LABELS.csv K ITERS [REPEATS]")
}
data_path <- args[1]
labels_path <- args[2]
K <- as.integer(args[3])
ITERS <- as.integer(args[4])
REPEATS <- if (length(args) >= 5) as.integer(args[5]) else 1L
if (ITERS < 2) stop("ITERS must be at least 2 (the 1-iteration fit is subtracted)")

dat <- read.csv(data_path)
labels <- as.integer(read.csv(labels_path)[[1]])
if (length(labels) != nrow(dat)) stop("DATA and LABELS have different numbers of rows")
if (!all(sort(unique(labels)) == seq_len(K))) stop("LABELS must use every label 1..K")
xnames <- setdiff(names(dat), "y")
gate_formula <- as.formula(paste("~", paste(xnames, collapse = " + ")))

blas <- tryCatch(basename(extSoftVersion()[["BLAS"]]), error = function(e) "?")
if (!nzchar(blas)) blas <- "?"
cat(sprintf(
  "info R=\"%s\" flexmix=%s nnet=%s blas=%s n=%d d=%d k=%d iters=%d repeats=%d\n",
  R.version.string, as.character(packageVersion("flexmix")), as.character(packageVersion("nnet")),
  blas, nrow(dat), length(xnames), K, ITERS, REPEATS
))

fit_once <- function(iters) {
  ctrl <- list(iter.max = iters, minprior = 0, tolerance = -1, verbose = 0)
  flexmix(y ~ ., data = dat, k = K, cluster = labels,
          model = FLXMRglm(family = "gaussian"),
          concomitant = FLXPmultinom(gate_formula),
          control = ctrl)
}

timed <- function(rep, iters) {
  gc(verbose = FALSE)
  t0 <- proc.time()
  fit <- fit_once(iters)
  dt <- proc.time() - t0
  cpu <- sum(dt[c("user.self", "sys.self")])
  if (length(fit@prior) != K) stop(sprintf("flexmix removed components: %d of %d left", length(fit@prior), K))
  cat(sprintf("fit repeat=%d requested=%d seconds=%.6f cpu=%.6f iter=%d loglik=%.10f\n",
              rep, iters, dt[["elapsed"]], cpu, fit@iter, as.numeric(logLik(fit))))
  flush(stdout())
}

invisible(fit_once(1L))  # warm-up: loads and byte-compiles what the fits use
for (r in seq_len(REPEATS)) {
  timed(r, 1L)
  timed(r, ITERS)
}
