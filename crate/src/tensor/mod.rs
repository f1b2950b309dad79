//! Element types, shapes and host storage.
pub mod dtype;
pub mod quant;
pub use dtype::{DType, UnknownDType};

/// Number of elements of a shape (the empty shape is a scalar: 1 element).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// `[a, b, c]` for messages.
pub fn fmt_shape(shape: &[usize]) -> String {
    format!("{shape:?}")
}
