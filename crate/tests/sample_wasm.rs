//! The sampler in Chromium (wasm32): the seeded stream and the inverse-CDF draw give the same
//! uniforms and tokens as natively (`crucible::sample::portability_probe`, pinned by the native
//! unit test `sample::tests::portability_probe_is_pinned`), so a seed means the same text in the
//! CLI and in the page. Processors against HF are checked natively in `sample_reference.rs`.
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p crucible --target wasm32-unknown-unknown --test sample_wasm`
#![cfg(target_arch = "wasm32")]

use crucible::sample::{PROBE_BITS, PROBE_TOKENS, SamplingParams, Sampler, portability_probe};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);

#[wasm_bindgen_test]
fn same_seed_same_tokens_as_native() {
    let (bits, tokens) = portability_probe();
    assert_eq!(bits, PROBE_BITS);
    assert_eq!(tokens, PROBE_TOKENS);
}

#[wasm_bindgen_test]
fn validation_names_the_field_in_wasm() {
    let err = Sampler::new(SamplingParams { top_p: 1.5, ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("`top_p`"), "{err}");
}
