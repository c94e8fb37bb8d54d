//! Strided matrix products for the CPU kernels, through the `gemm` crate (single-threaded: the
//! kernels parallelize over queries, one product per tile).

use super::real::Real;

/// A read-only strided matrix: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a, T> {
    /// Backing slice; must hold every element the strides reach.
    pub data: &'a [T],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major `rows x cols` with row stride `rs`.
    pub fn rows(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose of row-major `cols x rows` with row stride `rs`.
    pub fn transposed(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: 1,
            cs: rs,
        }
    }

    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// `dst (+)= lhs · rhs` with `dst` row-major `m x n`, row stride `dst_rs`.
///
/// Panics if a stride reaches past its slice: the kernels size every buffer from the same
/// tile sizes, so a panic here is a bug in this crate, never bad user input.
#[inline(always)]
pub fn matmul<T: Real>(dst: &mut [T], dst_rs: usize, lhs: Mat<T>, rhs: Mat<T>, accumulate: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "matmul: inner dims differ");
    assert!(lhs.extent() <= lhs.data.len() && rhs.extent() <= rhs.data.len());
    let dst_extent = Mat {
        data: &[] as &[T],
        rows: m,
        cols: n,
        rs: dst_rs,
        cs: 1,
    }
    .extent();
    assert!(dst_extent <= dst.len(), "matmul: destination too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(T::ZERO);
            }
        }
        return;
    }
    // SAFETY: the asserts above show that every element the strides reach lies inside its
    // slice; `dst` is a unique borrow, so it overlaps neither operand; T is f32 or f64, both
    // supported by gemm.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_products_match_loops() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|t| (t as f64 * 0.37).sin()).collect();
        // rhs given as the transpose of a row-major n x k matrix with row stride k + 2
        let bt: Vec<f64> = (0..n * (k + 2)).map(|t| (t as f64 * 0.11).cos()).collect();
        let mut c = vec![1.0; m * n];
        matmul(
            &mut c,
            n,
            Mat::rows(&a, m, k, k),
            Mat::transposed(&bt, k, n, k + 2),
            true,
        );
        for r in 0..m {
            for col in 0..n {
                let want: f64 = 1.0
                    + (0..k)
                        .map(|l| a[r * k + l] * bt[col * (k + 2) + l])
                        .sum::<f64>();
                assert!((c[r * n + col] - want).abs() < 1e-12);
            }
        }
    }
}
