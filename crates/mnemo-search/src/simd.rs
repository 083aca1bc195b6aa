//! Vector arithmetic: dot product (AVX2+FMA intrinsics when the CPU has them, otherwise a
//! multi-accumulator loop the compiler vectorises), validation and normalisation.

use crate::SearchError;

const LANES: usize = 16;

/// The portable body: 16 independent accumulators so the compiler can keep several SIMD
/// registers busy without a loop-carried dependency on one sum.
macro_rules! dot_body {
    ($a:expr, $b:expr, $madd:expr) => {{
        let a: &[f32] = $a;
        let b: &[f32] = $b;
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0f32; LANES];
        let ca = a.chunks_exact(LANES);
        let cb = b.chunks_exact(LANES);
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for i in 0..LANES {
                acc[i] = $madd(x[i], y[i], acc[i]);
            }
        }
        let mut tail = 0f32;
        for (x, y) in ra.iter().zip(rb) {
            tail += x * y;
        }
        // Pairwise reduction keeps the rounding error small.
        let mut width = LANES / 2;
        while width > 0 {
            for i in 0..width {
                acc[i] += acc[i + width];
            }
            width /= 2;
        }
        acc[0] + tail
    }};
}

#[inline]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_body!(a, b, |x: f32, y: f32, acc: f32| acc + x * y)
}

/// AVX2 + FMA body shared by the f32 and f16 kernels: four independent 8-wide accumulators.
/// `$load_a(o)` loads 8 values of the left operand at element `o` as `__m256`; `$tail(k)` is
/// element `k` of the left operand as `f32`. The caller imports `std::arch::x86_64::*`.
#[cfg(target_arch = "x86_64")]
macro_rules! avx_dot_body {
    ($n:expr, $pb:expr, $load_a:expr, $tail:expr) => {{
        let (n, pb) = ($n, $pb);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + 8 <= n on every load, both operands hold n elements.
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let o = i + 8 * j;
                *acc = _mm256_fmadd_ps($load_a(o), unsafe { _mm256_loadu_ps(pb.add(o)) }, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps($load_a(i), unsafe { _mm256_loadu_ps(pb.add(i)) }, acc[0]);
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
        let mut sum = _mm_cvtss_f32(s);
        for k in i..n {
            // SAFETY: k < n.
            sum += $tail(k) * unsafe { *pb.add(k) };
        }
        sum
    }};
}

/// AVX2 + FMA f32 kernel (LLVM's auto-vectoriser only used 2-wide registers for the portable
/// body here, so this path is written with intrinsics).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let pa = a.as_ptr();
    avx_dot_body!(
        a.len().min(b.len()),
        b.as_ptr(),
        |o: usize| unsafe { _mm256_loadu_ps(pa.add(o)) },
        |k: usize| a[k]
    )
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// AVX2 + FMA + F16C kernel: f16 values (raw bits) times f32 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(h: &[u16], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let ph = h.as_ptr();
    let one = |k: usize| {
        let mut tmp = [0u16; 8];
        tmp[0] = h[k];
        // SAFETY: tmp holds 8 values.
        _mm_cvtss_f32(_mm256_castps256_ps128(_mm256_cvtph_ps(unsafe {
            _mm_loadu_si128(tmp.as_ptr().cast())
        })))
    };
    avx_dot_body!(
        h.len().min(b.len()),
        b.as_ptr(),
        |o: usize| _mm256_cvtph_ps(unsafe { _mm_loadu_si128(ph.add(o).cast()) }),
        one
    )
}

/// f32 → f16 (round to nearest even) with F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn to_f16_f16c(v: &[f32], out: &mut Vec<u16>) {
    use std::arch::x86_64::*;
    for c in v.chunks(8) {
        let mut buf = [0f32; 8];
        buf[..c.len()].copy_from_slice(c);
        let mut res = [0u16; 8];
        // SAFETY: buf and res hold 8 elements each.
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(buf.as_ptr()));
            _mm_storeu_si128(res.as_mut_ptr().cast(), h);
        }
        out.extend_from_slice(&res[..c.len()]);
    }
}

/// Whether the f16 pre-scan is available (x86-64 with AVX2, FMA and F16C).
pub(crate) fn has_f16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| has_avx2_fma() && is_x86_feature_detected!("f16c"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Appends `v` rounded to f16 (raw bits). Only call when [`has_f16`] is true.
pub(crate) fn push_f16(v: &[f32], out: &mut Vec<u16>) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_f16() {
            // SAFETY: the CPU supports AVX2 and F16C (checked at run time).
            unsafe { to_f16_f16c(v, out) };
            return;
        }
    }
    unreachable!("push_f16 without F16C support: {}", v.len());
}

/// Dot product of f16 values with f32 values. Only call when [`has_f16`] is true.
#[inline]
pub(crate) fn dot_f16(h: &[u16], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_f16() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked at run time).
            return unsafe { dot_f16_avx2(h, b) };
        }
    }
    unreachable!("dot_f16 without F16C support: {} {}", h.len(), b.len());
}

/// Upper bound of `|dot_f16(f16(v), q) - dot(v, q)|` for unit vectors `v`, `q` of dimension
/// `dim`: f16 rounding (relative 2^-11, absolute 2^-25 for subnormals, summed with
/// Cauchy-Schwarz) plus the f32 rounding of both sums (dim * 2^-24 each), with a 1.5x margin.
pub(crate) fn f16_error_bound(dim: usize) -> f32 {
    let d = dim as f64;
    let e = 2f64.powi(-11) * (1.0 + 2f64.powi(-11))
        + 2f64.powi(-25) * d.sqrt()
        + 2.0 * d * 2f64.powi(-24) * 1.01;
    (1.5 * e) as f32
}

/// Dot product of the common prefix of `a` and `b`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe { dot_avx2_fma(a, b) };
        }
    }
    dot_portable(a, b)
}

/// Checks that `v` is a usable embedding: non-empty, finite, non-zero. Returns its norm.
pub(crate) fn check_finite_nonzero(v: &[f32]) -> Result<f64, SearchError> {
    if v.is_empty() {
        return Err(SearchError::InvalidVector("vector is empty".into()));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(SearchError::InvalidVector(format!(
            "element {i} is not a finite number"
        )));
    }
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(SearchError::InvalidVector("vector has zero length".into()));
    }
    Ok(norm)
}

/// Returns `v / |v|`, or an error if `v` cannot be normalised.
pub(crate) fn normalized(v: &[f32]) -> Result<Vec<f32>, SearchError> {
    let norm = check_finite_nonzero(v)?;
    let out: Vec<f32> = v.iter().map(|&x| (f64::from(x) / norm) as f32).collect();
    if out.iter().all(|&x| x == 0.0) {
        return Err(SearchError::InvalidVector("vector has zero length".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    }

    #[test]
    fn dot_matches_naive_for_all_lengths() {
        for n in 0..100 {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 2.0).collect();
            let want = naive(&a, &b);
            assert!((f64::from(dot(&a, &b)) - want).abs() < 1e-4, "n={n}");
            assert!(
                (f64::from(dot_portable(&a, &b)) - want).abs() < 1e-4,
                "n={n}"
            );
        }
    }

    #[test]
    fn f16_dot_is_within_its_bound() {
        if !has_f16() {
            return;
        }
        for dim in [1, 7, 8, 33, 384, 1000] {
            for seed in 0..20u32 {
                let mk = |salt: u32| {
                    let v: Vec<f32> = (0..dim as u32)
                        .map(|i| {
                            let x = (i.wrapping_mul(2654435761)
                                ^ (seed + salt).wrapping_mul(40503))
                                % 2001;
                            x as f32 / 1000.0 - 1.0
                        })
                        .collect();
                    normalized(&v).unwrap_or_else(|_| {
                        let mut u = vec![0.0; dim];
                        u[0] = 1.0;
                        u
                    })
                };
                let (v, q) = (mk(1), mk(977));
                let mut h = Vec::new();
                push_f16(&v, &mut h);
                assert_eq!(h.len(), dim);
                let err = (dot_f16(&h, &q) - dot(&v, &q)).abs();
                assert!(err <= f16_error_bound(dim), "dim {dim}: err {err}");
            }
        }
    }

    #[test]
    fn normalise_rejects_bad_vectors() {
        assert!(normalized(&[]).is_err());
        assert!(normalized(&[0.0, 0.0]).is_err());
        assert!(normalized(&[1.0, f32::NAN]).is_err());
        assert!(normalized(&[f32::INFINITY, 1.0]).is_err());
        let v = normalized(&[3.0, 4.0]).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        // Tiny but non-zero vectors normalise fine.
        let v = normalized(&[1e-30, 0.0]).unwrap();
        assert_eq!(v, vec![1.0, 0.0]);
    }
}
