/* Fused full-batch GD / m-SAM steps of one one-hidden-layer ReLU network (float64).

   The C twin of one_layer_relu_nets.engine._run_group_torch for full batches; it exists because
   the torch path launches ~40 tiny kernels per step (0.3 ms) and the reference budget is 10^6
   steps. The math is that of engine.py's module docstring, in the same order of operations:

     f(x) = sum_j a_j relu(w_j . x + b_j),   L = sum_i omega 0.5 r_i^2,   r_i = f(x_i) - y_i
     GD:    w <- w - lr_t sum_i omega grad l_i(w)
     m-SAM: for chunk k (m consecutive examples): g_k = sum_{i in C_k} omega_c r_i grad f(x_i),
            e_k = rho_t g_k / (||g_k||_2 + eps)  (normalized)  or  rho_t g_k,
            w <- w - lr_t sum_k sum_{i in C_k} omega grad l_i(w + e_k)

   tests/test_one_layer_training.py pins this kernel against the torch path (which takes its
   ascent from sharpness.functional.perturbation) for every algorithm and schedule. */
#include <math.h>
#include <string.h>

/* h (width) = W x + b; returns f(x) = sum_j a_j relu(h_j). */
static double forward1(int d, int width, const double *x, const double *W, const double *b,
                       const double *a, double *h) {
    double out = 0.0;
    for (int j = 0; j < width; j++) {
        double s = b[j];
        if (d == 1) {
            s = x[0] * W[j] + b[j];
        } else {
            s = 0.0;
            for (int k = 0; k < d; k++) s += x[k] * W[j * d + k];
            s += b[j];
        }
        h[j] = s;
    }
#pragma omp simd reduction(+ : out)
    for (int j = 0; j < width; j++) out += (h[j] > 0.0 ? h[j] : 0.0) * a[j];
    return out;
}

/* g += s * grad_params f(x) at (h, a): ga += s relu(h), gb += s a D, gW += s a D x. */
static void accumulate(int d, int width, const double *x, const double *h, const double *a,
                       double s, double *gW, double *gb, double *ga) {
    if (d == 1) { /* branch-free, so that the compiler vectorizes it */
        double x0 = x[0];
#pragma omp simd
        for (int j = 0; j < width; j++) {
            double on = h[j] > 0.0 ? 1.0 : 0.0;
            double da = on * s * a[j];
            ga[j] += s * (on * h[j]);
            gb[j] += da;
            gW[j] += da * x0;
        }
        return;
    }
    for (int j = 0; j < width; j++) {
        if (h[j] > 0.0) {
            double da = s * a[j];
            ga[j] += s * h[j];
            gb[j] += da;
            for (int k = 0; k < d; k++) gW[j * d + k] += da * x[k];
        }
    }
}

/* Advance one run from step t0 until it stops or reaches step t1 (not stepping at t1).

   Steps t use lr_f[t - t0] and rho_f[t - t0] (the schedule factors, computed in Python).
   m = 0 is GD; otherwise m divides n (n / m chunks). At every t the full unperturbed loss is
   evaluated; the run stops (status 1) when it is <= thr, diverges (status 2) when it is not finite,
   ends (status 3) at t == T; otherwise at t == t1 it returns status 0. *t_out and *loss_out hold
   the last t and its loss. work: at least n*width + 6*width*(d+2) doubles. */
int relu_advance(int n, int d, int width, int m, const double *X, const double *y, double *W,
                 double *b, double *a, double omega, double omega_chunk, int normalize,
                 double rho, double eps, double lr, const double *lr_f, const double *rho_f,
                 double thr, long t0, long t1, long T, double *loss_out, long *t_out,
                 double *work) {
    int P = width * d + 2 * width;
    double *H = work;                 /* n x width pre-activations at w */
    double *r = H + (long)n * width;  /* n residuals */
    double *G = r + n;                /* P: the update direction (gW | gb | ga) */
    double *g = G + P;                /* P: a chunk's ascent gradient */
    double *wp = g + P;               /* P: perturbed parameters (W | b | a) */
    double *hp = wp + P;              /* width */
    for (long t = t0;; t++) {
        double loss = 0.0;
        for (int i = 0; i < n; i++) {
            r[i] = forward1(d, width, X + (long)i * d, W, b, a, H + (long)i * width) - y[i];
            loss += 0.5 * omega * r[i] * r[i];
        }
        *t_out = t;
        *loss_out = loss;
        if (!isfinite(loss)) return 2;
        if (loss <= thr) return 1;
        if (t == T) return 3;
        if (t == t1) return 0;
        memset(G, 0, sizeof(double) * P);
        double *GW = G, *Gb = G + width * d, *Ga = Gb + width;
        if (m == 0) {
            for (int i = 0; i < n; i++)
                accumulate(d, width, X + (long)i * d, H + (long)i * width, a, omega * r[i], GW, Gb,
                           Ga);
        } else {
            double rho_t = rho * rho_f[t - t0];
            double *gW = g, *gb = g + width * d, *ga = gb + width;
            double *Wp = wp, *bp = wp + width * d, *ap = bp + width;
            for (int c = 0; c < n; c += m) {
                memset(g, 0, sizeof(double) * P);
                for (int i = c; i < c + m; i++)
                    accumulate(d, width, X + (long)i * d, H + (long)i * width, a,
                               omega_chunk * r[i], gW, gb, ga);
                double coef = rho_t;
                if (normalize) {
                    double sq = 0.0;
#pragma omp simd reduction(+ : sq)
                    for (int q = 0; q < P; q++) sq += g[q] * g[q];
                    coef = rho_t / (sqrt(sq) + eps);
                }
                for (int q = 0; q < width * d; q++) Wp[q] = W[q] + g[q] * coef;
                for (int j = 0; j < width; j++) {
                    bp[j] = b[j] + gb[j] * coef;
                    ap[j] = a[j] + ga[j] * coef;
                }
                for (int i = c; i < c + m; i++) {
                    const double *x = X + (long)i * d;
                    double rp = forward1(d, width, x, Wp, bp, ap, hp) - y[i];
                    accumulate(d, width, x, hp, ap, omega * rp, GW, Gb, Ga);
                }
            }
        }
        double lr_t = lr * lr_f[t - t0];
        for (int q = 0; q < width * d; q++) W[q] -= lr_t * GW[q];
        for (int j = 0; j < width; j++) {
            b[j] -= lr_t * Gb[j];
            a[j] -= lr_t * Ga[j];
        }
    }
}
