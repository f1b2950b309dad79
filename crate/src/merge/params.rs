//! Resolved parameter values (after gradient interpolation and filter matching).

use std::collections::BTreeMap;

/// A parameter value as a method receives it.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Float(f64),
    Bool(bool),
    Str(String),
}

/// Parameters resolved for one tensor (and one model, for per-model parameters).
pub type Params = BTreeMap<String, Scalar>;
