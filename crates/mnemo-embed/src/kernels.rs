//! The encoder's element-wise and attention kernels, on plain `f32` slices.
//!
//! Matrix products go to gemm-f32 (the kernels candle uses, here with AVX-512 enabled), writing
//! into the caller's buffers; everything between them is here, fused so each activation is
//! read and written once: bias + GELU, bias + LayerNorm, and the whole of self-attention for
//! packed (unpadded) sequences. The transcendental functions are
//! branch-free polynomial approximations (exp: Cephes, ~1 ulp; erf: a rational fit, < 1e-6
//! absolute) so the compiler vectorises them. Each public kernel is compiled twice, for the
//! baseline x86-64 and for AVX2 + FMA, and picks one at run time.

use rayon::prelude::*;

/// Rows handed to one rayon task by the row-wise kernels.
const ROWS_PER_TASK: usize = 16;

/// Compiles `$body` as a generic function and as an AVX2 + FMA one, and dispatches at run time.
/// The body sees a `const FMA: bool` to pass to [`madd`], [`exp`] and [`erf`].
macro_rules! multiversion {
    (fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        pub(crate) fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic<const FMA: bool>($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    generic::<true>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic::<false>($($arg),*)
        }
    };
}

/// `a * b + c`, as one fused instruction where the caller was compiled with FMA (`FMA`), as a
/// multiply and an add otherwise (a software `fma` call would be far slower).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// e^x for `x` in about [-87, 88] (smaller values give ~0), Cephes' single-precision
/// polynomial after reduction by powers of two. Branch-free so that loops over it vectorise.
#[inline(always)]
pub(crate) fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest without a call: adding 1.5 * 2^23 pushes the fraction out, and the
    // low bits of `shifted` then hold n as an integer (two's complement offset).
    let shifted = madd::<FMA>(x, LOG2E, 12_582_912.0);
    let n = shifted - 12_582_912.0;
    let r = madd::<FMA>(-n, C2, madd::<FMA>(-n, C1, x));
    let mut p = 1.987_569_1e-4f32;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 0.5);
    let y = madd::<FMA>(p, r * r, r + 1.0);
    // 2^n: n + 127 in the exponent field (n is in [-126, 127] after the clamp).
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    y * scale
}

/// erf(x), rational approximation (odd degree-13 numerator, even degree-8 denominator) with
/// an absolute error below 1e-6; erf(±4) is ±1 in `f32`, so the input is clamped there.
#[inline(always)]
pub(crate) fn erf<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = madd::<FMA>(p, x2, 2.770_681_4e-8);
    p = madd::<FMA>(p, x2, -2.101_024e-6);
    p = madd::<FMA>(p, x2, -5.692_506_4e-5);
    p = madd::<FMA>(p, x2, -7.349_906_3e-4);
    p = madd::<FMA>(p, x2, -2.954_6e-3);
    p = madd::<FMA>(p, x2, -1.609_603_3e-2);
    let p = p * x;
    let mut q = -1.456_607_2e-5f32;
    q = madd::<FMA>(q, x2, -2.133_740_6e-4);
    q = madd::<FMA>(q, x2, -1.682_827e-3);
    q = madd::<FMA>(q, x2, -7.373_329e-3);
    q = madd::<FMA>(q, x2, -1.426_473_9e-2);
    p / q
}

/// Sum of `a[i] * b[i]`, in eight interleaved partial sums so that it vectorises.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] = madd::<FMA>(x[i], y[i], acc[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of `a`, in eight interleaved partial sums.
#[inline(always)]
fn sum(a: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let a8 = a.chunks_exact(8);
    let tail: f32 = a8.remainder().iter().sum();
    for x in a8 {
        for i in 0..8 {
            acc[i] += x[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

multiversion! {
    fn bias_gelu_rows(rows: &mut [f32], bias: &[f32]) {
        for row in rows.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                let x = *v + b;
                *v = 0.5 * x * (1.0 + erf::<FMA>(x * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }
}

/// `x = gelu(x + bias)` for every row of `x` (row length = `bias.len()`), with the exact
/// (erf) GELU BERT uses.
pub(crate) fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    x.par_chunks_mut(bias.len() * ROWS_PER_TASK)
        .for_each(|rows| bias_gelu_rows(rows, bias));
}

multiversion! {
    fn norm_rows(rows: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let width = gamma.len();
        for row in rows.chunks_exact_mut(width) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
            let mean = sum(row) / width as f32;
            for v in row.iter_mut() {
                *v -= mean;
            }
            let var = dot::<FMA>(row, row);
            let inv = 1.0 / (var / width as f32 + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                *v = madd::<FMA>(*v * inv, *g, *b);
            }
        }
    }
}

/// `x = LayerNorm(x + bias)` row by row (row length = `gamma.len()`).
pub(crate) fn bias_layer_norm(x: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    x.par_chunks_mut(gamma.len() * ROWS_PER_TASK)
        .for_each(|rows| norm_rows(rows, bias, gamma, beta, eps));
}

/// `out = a · b`, or `out += a · b` when `accumulate`, for row-major `a` [m, k], `b` [k, n]
/// and `out` [m, n]; on the current rayon pool's threads.
pub(crate) fn matmul(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
) {
    assert!(a.len() == m * k && b.len() == k * n && out.len() == m * n);
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm_common::Parallelism::Rayon(threads)
    } else {
        gemm_common::Parallelism::None
    };
    // gemm-f32's entry point (what `gemm::gemm` calls for f32), chosen for this CPU once. Its
    // kernels want a column-major destination, so compute outᵀ = bᵀ · aᵀ: the same memory
    // read as column-major matrices (what the `gemm` facade does for row-major outputs).
    let gemm = gemm_f32::gemm::f32::get_gemm_fn();
    // SAFETY: the three slices hold exactly m*k, k*n and m*n values (checked above) and the
    // strides below describe those row-major matrices read as column-major transposes
    // (outᵀ: n×m, column stride n; bᵀ: n×k, column stride n; aᵀ: k×m, column stride k), so
    // every access is in bounds; `out` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm(
            n,
            m,
            k,
            out.as_mut_ptr(),
            n as isize,
            1,
            accumulate,
            b.as_ptr(),
            n as isize,
            1,
            a.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Self-attention geometry: `heads` heads of `head_dim` values each.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heads {
    pub heads: usize,
    pub head_dim: usize,
}

impl Heads {
    fn hidden(self) -> usize {
        self.heads * self.head_dim
    }
}

multiversion! {
    fn attend_one(
        qkv: &[f32],
        bias: &[f32],
        out: &mut [f32],
        heads: Heads,
        scratch: &mut Vec<f32>,
    ) {
        let hidden = heads.hidden();
        let d = heads.head_dim;
        let len = qkv.len() / (3 * hidden);
        // Keys are handled in groups of 8 (one AVX2 register); the padding keys are zero and
        // their scores are never used.
        let padded = len.div_ceil(8) * 8;
        let scale = 1.0 / (d as f32).sqrt();
        // Per head h: Q (scaled) [len, d], K transposed [d, padded], V [len, d]; filled in one
        // pass over the tokens. Then one score row.
        let (qs, ks, vs) = (len * d, d * padded, len * d);
        scratch.clear();
        scratch.resize(heads.heads * (qs + ks + vs) + padded, 0.0);
        let (q_all, rest) = scratch.split_at_mut(heads.heads * qs);
        let (kt_all, rest) = rest.split_at_mut(heads.heads * ks);
        let (v_all, scores) = rest.split_at_mut(heads.heads * vs);
        for (t, row) in qkv.chunks_exact(3 * hidden).enumerate() {
            let (qr, rest) = row.split_at(hidden);
            let (kr, vr) = rest.split_at(hidden);
            let (qb, rest) = bias.split_at(hidden);
            let (kb, vb) = rest.split_at(hidden);
            for h in 0..heads.heads {
                let c = h * d..(h + 1) * d;
                let qo = &mut q_all[h * qs + t * d..h * qs + (t + 1) * d];
                for ((o, x), b) in qo.iter_mut().zip(&qr[c.clone()]).zip(&qb[c.clone()]) {
                    *o = (x + b) * scale;
                }
                let vo = &mut v_all[h * vs + t * d..h * vs + (t + 1) * d];
                for ((o, x), b) in vo.iter_mut().zip(&vr[c.clone()]).zip(&vb[c.clone()]) {
                    *o = x + b;
                }
                let kt = &mut kt_all[h * ks..(h + 1) * ks];
                for (i, (x, b)) in kr[c.clone()].iter().zip(&kb[c]).enumerate() {
                    kt[i * padded + t] = x + b;
                }
            }
        }
        for h in 0..heads.heads {
            let col = h * d;
            let q = &q_all[h * qs..(h + 1) * qs];
            let kt = &kt_all[h * ks..(h + 1) * ks];
            let v = &v_all[h * vs..(h + 1) * vs];
            let out = HeadOut { out: &mut *out, hidden, col };
            match d {
                32 => attend_head::<FMA, 32>(q, kt, v, len, scores, out),
                64 => attend_head::<FMA, 64>(q, kt, v, len, scores, out),
                _ => attend_head_any::<FMA>(q, kt, v, len, d, scores, out),
            }
        }
    }
}

/// Where one head writes its context: columns `col..col + head_dim` of rows `hidden` wide.
struct HeadOut<'a> {
    out: &'a mut [f32],
    hidden: usize,
    col: usize,
}

/// One head's attention with the head size known at compile time: queries `q` [len, D],
/// keys transposed `kt` [D, padded], values `v` [len, D]; `scores` has `padded` entries.
/// Scores are accumulated in registers for 8 keys at a time in 4 independent chains, and the
/// weighted sum of values in 2, so the FMA units are not waiting on each other.
#[inline(always)]
fn attend_head<const FMA: bool, const D: usize>(
    q: &[f32],
    kt: &[f32],
    v: &[f32],
    len: usize,
    scores: &mut [f32],
    dst: HeadOut<'_>,
) {
    let padded = scores.len();
    for (t, qt) in q.chunks_exact(D).enumerate() {
        let qt: &[f32; D] = qt.try_into().expect("D values");
        for (jb, s8) in scores.chunks_exact_mut(8).enumerate() {
            let mut acc = [[0.0f32; 8]; 4];
            for i in 0..D {
                let k = &kt[i * padded + jb * 8..i * padded + jb * 8 + 8];
                let a = &mut acc[i % 4];
                for l in 0..8 {
                    a[l] = madd::<FMA>(qt[i], k[l], a[l]);
                }
            }
            for l in 0..8 {
                s8[l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
            }
        }
        let inv = softmax_in_place::<FMA>(scores, len);
        let mut o = [[0.0f32; D]; 2];
        let mut pairs = scores[..len].chunks_exact(2).zip(v.chunks_exact(2 * D));
        for (p, vv) in pairs.by_ref() {
            let (v0, v1) = vv.split_at(D);
            let (v0, v1): (&[f32; D], &[f32; D]) =
                (v0.try_into().expect("D"), v1.try_into().expect("D"));
            for i in 0..D {
                o[0][i] = madd::<FMA>(p[0], v0[i], o[0][i]);
                o[1][i] = madd::<FMA>(p[1], v1[i], o[1][i]);
            }
        }
        if len % 2 == 1 {
            let p = scores[len - 1];
            let vl = &v[(len - 1) * D..len * D];
            for i in 0..D {
                o[0][i] = madd::<FMA>(p, vl[i], o[0][i]);
            }
        }
        let start = t * dst.hidden + dst.col;
        for (d, i) in dst.out[start..start + D].iter_mut().zip(0..D) {
            *d = (o[0][i] + o[1][i]) * inv;
        }
    }
}

/// [`attend_head`] for any head size.
#[inline(always)]
fn attend_head_any<const FMA: bool>(
    q: &[f32],
    kt: &[f32],
    v: &[f32],
    len: usize,
    d: usize,
    scores: &mut [f32],
    dst: HeadOut<'_>,
) {
    let padded = scores.len();
    for (t, qt) in q.chunks_exact(d).enumerate() {
        scores.fill(0.0);
        for (&qi, krow) in qt.iter().zip(kt.chunks_exact(padded)) {
            for (s, k) in scores.iter_mut().zip(krow) {
                *s = madd::<FMA>(qi, *k, *s);
            }
        }
        let inv = softmax_in_place::<FMA>(scores, len);
        let start = t * dst.hidden + dst.col;
        let o = &mut dst.out[start..start + d];
        o.fill(0.0);
        for (s, vr) in scores[..len].iter().zip(v.chunks_exact(d)) {
            for (oi, vi) in o.iter_mut().zip(vr) {
                *oi = madd::<FMA>(*s, *vi, *oi);
            }
        }
        o.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Replaces the first `len` scores by exp(score - max) (the padding after them with
/// garbage) and returns 1 / their sum.
#[inline(always)]
fn softmax_in_place<const FMA: bool>(scores: &mut [f32], len: usize) -> f32 {
    let max = scores[..len]
        .iter()
        .fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    for s8 in scores.chunks_exact_mut(8) {
        for s in s8 {
            *s = exp::<FMA>(*s - max);
        }
    }
    1.0 / sum(&scores[..len])
}

/// Multi-head self-attention over packed sequences.
///
/// `qkv` holds, for every token of every sequence back to back, the query, key and value
/// projections without their bias (`3 * hidden` values; `bias` is added here); `lens` gives
/// each sequence's token count. A token attends to the tokens of its own sequence only, so
/// no padding or mask exists. Returns the attention context, `hidden` values per token.
pub(crate) fn attention(qkv: &[f32], bias: &[f32], lens: &[usize], heads: Heads, out: &mut [f32]) {
    let hidden = heads.hidden();
    let total: usize = lens.iter().sum();
    assert!(qkv.len() == total * 3 * hidden && out.len() == total * hidden);
    // Split the input and output into per-sequence blocks.
    let mut jobs = Vec::with_capacity(lens.len());
    let (mut qkv_rest, mut out_rest) = (qkv, out);
    for &len in lens {
        let (a, b) = qkv_rest.split_at(len * 3 * hidden);
        let (c, d) = std::mem::take(&mut out_rest).split_at_mut(len * hidden);
        jobs.push((a, c));
        qkv_rest = b;
        out_rest = d;
    }
    jobs.into_par_iter()
        .for_each_init(Vec::new, |scratch, (q, o)| {
            attend_one(q, bias, o, heads, scratch)
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            for got in [exp::<false>(x), exp::<true>(x)] {
                worst = worst.max(((got - x.exp()) / x.exp()).abs());
            }
            x += 0.001_7;
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert!(exp::<false>(-1000.0) < 1e-37);
        assert_eq!(exp::<false>(0.0), 1.0);
    }

    #[test]
    fn erf_matches_reference() {
        // Reference: erf via f64 series/continued fraction is not in std; use the
        // relation erf(x) = 1 - erfc(x) with a high-precision f64 implementation.
        fn erf64(x: f64) -> f64 {
            // Abramowitz-Stegun 7.1.5 Taylor series converges fast for |x| < 4 in f64.
            let mut acc = 0.0f64;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 * acc.abs().max(1e-300) || n < 5.0 {
                acc += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
                if n > 200.0 {
                    break;
                }
            }
            2.0 / std::f64::consts::PI.sqrt() * acc
        }
        let mut worst = 0.0f64;
        let mut x = -3.5f64;
        while x < 3.5 {
            for got in [erf::<false>(x as f32), erf::<true>(x as f32)] {
                worst = worst.max((got as f64 - erf64(x)).abs());
            }
            x += 0.000_97;
        }
        assert!(worst < 1e-6, "absolute error {worst}");
        assert!((erf::<false>(10.0) - 1.0).abs() < 1e-6);
        assert!((erf::<false>(-10.0) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn matmul_matches_naive() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 - 2.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 3) as f32 * 0.5).collect();
        let mut out = vec![1.0f32; m * n];
        matmul(&mut out, &a, &b, (m, k, n), true);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum::<f32>();
                assert!((out[i * n + j] - want).abs() < 1e-5);
            }
        }
        matmul(&mut out, &a, &b, (m, k, n), false);
        assert!((out[0] - (0..k).map(|l| a[l] * b[l * n]).sum::<f32>()).abs() < 1e-5);
    }

    #[test]
    fn layer_norm_rows() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0];
        let bias = vec![0.5; 4];
        let gamma = vec![2.0; 4];
        let beta = vec![1.0; 4];
        bias_layer_norm(&mut x, &bias, &gamma, &beta, 1e-12);
        let sd = (1.25f32).sqrt();
        let want = [-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd];
        for (got, w) in x[..4].iter().zip(want) {
            assert!((got - (w * 2.0 + 1.0)).abs() < 1e-5, "{got} vs {w}");
        }
        assert!(x[4..].iter().all(|v| (v - 1.0).abs() < 1e-5));
    }

    fn check_attention(heads: Heads, lens: &[usize]) {
        let hidden = heads.hidden();
        let hd = heads.head_dim;
        let total: usize = lens.iter().sum();
        let qkv: Vec<f32> = (0..total * 3 * hidden)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let bias: Vec<f32> = (0..3 * hidden).map(|i| (i % 13) as f32 * 0.01).collect();
        let mut got = vec![f32::NAN; total * hidden];
        attention(&qkv, &bias, lens, heads, &mut got);
        let mut start = 0;
        for &len in lens {
            for t in 0..len {
                for h in 0..heads.heads {
                    let val = |tok: usize, part: usize, i: usize| {
                        let c = part * hidden + h * hd + i;
                        (qkv[(start + tok) * 3 * hidden + c] + bias[c]) as f64
                    };
                    let scores: Vec<f64> = (0..len)
                        .map(|s| {
                            (0..hd).map(|i| val(t, 0, i) * val(s, 1, i)).sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for i in 0..hd {
                        let want: f64 = (0..len).map(|s| e[s] / z * val(s, 2, i)).sum();
                        let g = got[(start + t) * hidden + h * hd + i] as f64;
                        assert!((g - want).abs() < 1e-5, "{g} vs {want}");
                    }
                }
            }
            start += len;
        }
    }

    #[test]
    fn attention_matches_naive() {
        let lens = [3usize, 1, 5, 8, 9, 17, 2];
        for head_dim in [4, 32, 64] {
            check_attention(Heads { heads: 2, head_dim }, &lens);
        }
    }
}
