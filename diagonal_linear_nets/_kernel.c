/* Fused closed-form steps of diagonal linear networks (see kernel.py for the math and the ABI).
 *
 * Every run advances independently with the same instruction sequence, so a run's result does not
 * depend on which other runs share the call (batched == single, bit for bit). Sums over examples
 * and coordinates run in a fixed order; dot products use four partial sums (fixed order too).
 * Compiled without -ffast-math and with -ffp-contract=off: IEEE float64, no reassociation.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline double dot(const double *restrict a, const double *restrict b, int d) {
    double s[4] = {0.0, 0.0, 0.0, 0.0}; /* four partial sums: vectorizable, fixed order */
    int i = 0;
    for (; i + 4 <= d; i += 4)
        for (int k = 0; k < 4; k++) s[k] += a[i + k] * b[i + k];
    for (; i < d; i++) s[0] += a[i] * b[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/* Per-run settings (one struct per run, read only). */
typedef struct {
    int32_t m;          /* chunk size of the ascent (n: n-SAM, 1: 1-SAM); with sampling: per batch */
    int32_t batch;      /* 0: full batch; b > 0: b examples per step from idx (SGD / mini-batch SAM) */
    int32_t ldo;        /* 1: 1-SAM's loss-derivative-only variant (descent uses u, v, not u~, v~) */
    int32_t ngd;        /* 1: normalized GD (grad_u, grad_v each divided by its norm) */
    double rho;         /* ascent radius (0: plain GD / SGD) */
    double gamma;       /* step size */
    double wd;          /* weight decay as in the original: w -= wd * w (not scaled by gamma) */
    double bal;         /* the original's balancedness term */
} run_t;

/* Advance runs [0, R) by `steps` steps.
 * X (R, n, d), y (R, n): data; u, v (R, d): state, updated in place;
 * idx (R, steps, bmax) int32: sampled examples of runs with batch > 0 (else unused, may be NULL);
 * track (R, d) or NULL: log a^2 accumulated (flow's implicit-bias bookkeeping);
 * param 0: beta = u v, 1: beta = u^2 - v^2; normalize: ascent rho g / ||g||;
 * thr: a run whose loss exceeds thr (or is NaN) stops; one whose next state is not finite stops
 *      before taking it. div (R): -1, or the step (0-based, in this call) at which the run stopped;
 * work: scratch of 7 d + 2 n doubles. */
void dln_advance(int R, int n, int d, const double *X, const double *y, double *u, double *v,
                 const run_t *runs, const int32_t *idx, int bmax, long steps, int param,
                 int normalize, double thr, double *track, int32_t *div, double *work) {
    double *restrict b = work, *restrict G = work + d, *restrict ut = work + 2 * d;
    double *restrict vt = work + 3 * d, *restrict bt = work + 4 * d, *restrict gu = work + 5 * d;
    double *restrict gv = work + 6 * d, *restrict r = work + 7 * d;
    int32_t *J = (int32_t *)(work + 7 * d + n); /* n int32 fit in n doubles */
    for (int q = 0; q < R; q++) {
        const run_t *P = runs + q;
        const double *Xq = X + (long)q * n * d, *yq = y + (long)q * n;
        double *uq = u + (long)q * d, *vq = v + (long)q * d;
        double *tq = track ? track + (long)q * d : NULL;
        div[q] = -1;
        int nb = P->batch > 0 ? P->batch : n;
        int m = P->batch > 0 ? (P->m < nb ? P->m : nb) : P->m;
        if (P->batch <= 0)
            for (int j = 0; j < n; j++) J[j] = j;
        for (long t = 0; t < steps; t++) {
            if (P->batch > 0) memcpy(J, idx + ((long)q * steps + t) * bmax, nb * sizeof(int32_t));
            for (int i = 0; i < d; i++) b[i] = param ? uq[i] * uq[i] - vq[i] * vq[i] : uq[i] * vq[i];
            /* the full training loss decides divergence (sampled runs included) */
            double L = 0.0;
            for (int j = 0; j < n; j++) {
                double e = dot(Xq + (long)j * d, b, d) - yq[j];
                if (P->batch <= 0) r[j] = e;
                L += e * e;
            }
            L /= 2.0 * n;
            if (!(L <= thr)) { div[q] = (int32_t)t; break; }
            if (P->batch > 0)
                for (int j = 0; j < nb; j++) r[j] = dot(Xq + (long)J[j] * d, b, d) - yq[J[j]];
            memset(gu, 0, d * sizeof(double));
            memset(gv, 0, d * sizeof(double));
            for (int c0 = 0; c0 < nb; c0 += m) {
                double re = P->rho;
                /* G: the beta-gradient of the chunk's loss ||X_c beta - y_c||^2 / (2m) */
                if (re != 0.0) {
                    memset(G, 0, d * sizeof(double));
                    for (int j = c0; j < c0 + m; j++) {
                        const double *restrict x = Xq + (long)J[j] * d;
                        for (int i = 0; i < d; i++) G[i] += r[j] * x[i];
                    }
                    if (m > 1) /* exact for m = 1: skip the division */
                        for (int i = 0; i < d; i++) G[i] /= m;
                }
                if (re != 0.0 && normalize) {
                    /* ||(G (.) dbeta/du, G (.) dbeta/dv)||_2 */
                    double g2 = 0.0;
                    for (int i = 0; i < d; i++) {
                        double s = uq[i] * uq[i] + vq[i] * vq[i];
                        g2 += G[i] * G[i] * (param ? 4.0 * s : s);
                    }
                    re = re / (sqrt(g2) + 1e-12); /* eps as sharpness.functional.perturbation */
                }
                if (re == 0.0) {
                    memcpy(ut, uq, d * sizeof(double));
                    memcpy(vt, vq, d * sizeof(double));
                    memcpy(bt, b, d * sizeof(double));
                } else if (param) {
                    for (int i = 0; i < d; i++) {
                        ut[i] = uq[i] + re * (2.0 * G[i] * uq[i]);
                        vt[i] = vq[i] - re * (2.0 * G[i] * vq[i]);
                        bt[i] = ut[i] * ut[i] - vt[i] * vt[i];
                    }
                } else {
                    for (int i = 0; i < d; i++) {
                        ut[i] = uq[i] + re * (G[i] * vq[i]);
                        vt[i] = vq[i] + re * (G[i] * uq[i]);
                        bt[i] = ut[i] * vt[i];
                    }
                }
                const double *restrict du = P->ldo ? uq : ut, *restrict dv = P->ldo ? vq : vt;
                for (int j = c0; j < c0 + m; j++) {
                    const double *restrict x = Xq + (long)J[j] * d;
                    double rt = re == 0.0 ? r[j] : dot(x, bt, d) - yq[J[j]];
                    if (param)
                        for (int i = 0; i < d; i++) {
                            gu[i] += rt * x[i] * (2.0 * du[i]);
                            gv[i] -= rt * x[i] * (2.0 * dv[i]);
                        }
                    else
                        for (int i = 0; i < d; i++) {
                            gu[i] += rt * x[i] * dv[i];
                            gv[i] += rt * x[i] * du[i];
                        }
                    if (tq && re != 0.0) {
                        /* log a^2 -= c gamma w_j rho_eff <g~_j, G_j> (c = 2 for uv, 8 for u2v2) */
                        double cg = (param ? 8.0 : 2.0) * P->gamma * re * rt / nb;
                        for (int i = 0; i < d; i++) tq[i] -= cg * x[i] * G[i];
                    }
                }
            }
            double su = 1.0 / nb, sv = 1.0 / nb;
            if (P->ngd) {
                double nu = 0.0, nv = 0.0;
                for (int i = 0; i < d; i++) { nu += gu[i] * gu[i]; nv += gv[i] * gv[i]; }
                if (nu > 0.0 && nv > 0.0) { su = 1.0 / sqrt(nu); sv = 1.0 / sqrt(nv); }
            }
            int finite = 1;
            for (int i = 0; i < d; i++) {
                double a = uq[i], c = vq[i];
                double nu = a - P->gamma * (gu[i] * su), nv = c - P->gamma * (gv[i] * sv);
                if (P->wd != 0.0) { nu -= P->wd * a; nv -= P->wd * c; }
                if (P->bal != 0.0) {
                    nu -= P->bal * a * (fabs(a) > fabs(c) ? 1.0 : -1.0);
                    nv -= P->bal * c * (fabs(c) > fabs(a) ? 1.0 : -1.0);
                }
                ut[i] = nu;
                vt[i] = nv;
                finite &= isfinite(nu) && isfinite(nv);
            }
            if (!finite) { div[q] = (int32_t)t; break; } /* keep the last finite state */
            memcpy(uq, ut, d * sizeof(double));
            memcpy(vq, vt, d * sizeof(double));
        }
    }
}
