//! Test-only inputs for the property tests: the repository's fixtures and mutations of them
//! (bytes overwritten, inserted, truncated), so fuzzing starts from what Stencil really sends.

use proptest::prelude::*;

const FIXTURES: [&[u8]; 5] = [
    include_bytes!("../fixtures/payloads/stencil-image-created.json"),
    include_bytes!("../fixtures/payloads/stencil-image-created-templated.json"),
    include_bytes!("../fixtures/payloads/legacy-image-created-with-id.json"),
    include_bytes!("../fixtures/payloads/legacy-image-created-minimal.json"),
    include_bytes!("../fixtures/payloads/legacy-image-created-other-template.json"),
];

/// A fixture payload as it is.
pub(crate) fn fixture() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(FIXTURES.to_vec()).prop_map(<[u8]>::to_vec)
}

/// A fixture payload with random damage, or arbitrary bytes.
pub(crate) fn payload() -> impl Strategy<Value = Vec<u8>> {
    let damaged = (fixture(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..8))
        .prop_map(|(mut bytes, edits)| {
            for (at, byte, kind) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => bytes.truncate(i),
                }
            }
            bytes
        });
    prop_oneof![3 => damaged, 1 => prop::collection::vec(any::<u8>(), 0..512)]
}
