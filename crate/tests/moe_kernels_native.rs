#![cfg(not(target_arch = "wasm32"))]
//! The mixture-of-experts kernels (router softmax/top-k, gather, weighted scatter-add, experts by
//! id `qmatvec_id`, `moe_combine`) against
//! their CPU references natively through wgpu (Vulkan: Mesa lavapipe on machines without a GPU).
//! No adapter FAILS these tests.
//!
//! Run: `XDG_RUNTIME_DIR=/tmp cargo test -p crucible --test moe_kernels_native -- --nocapture`

mod gpu_common;
mod moe_kernels;

use gpu_common::ctx;
use moe_kernels::*;


#[test]
fn router_matches_reference_for_both_conventions_and_ties() {
    pollster::block_on(router_cases(&ctx()));
}

#[test]
fn gather_matches_reference() {
    pollster::block_on(gather_cases(&ctx()));
}

#[test]
fn scatter_add_matches_reference() {
    pollster::block_on(scatter_cases(&ctx()));
}

#[test]
fn qmatvec_id_matches_reference_for_every_format() {
    pollster::block_on(qmatvec_id_cases(&ctx()));
}

#[test]
fn moe_combine_matches_reference() {
    pollster::block_on(moe_combine_cases(&ctx()));
}

#[test]
fn qmatvec_id_on_a_2d_grid() {
    pollster::block_on(qmatvec_id_2d_grid_case(&ctx()));
}
