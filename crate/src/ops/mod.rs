//! GPU ops: one file per op (params, Meta, dispatch, CPU reference).
